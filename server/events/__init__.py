"""Workout events: a transactional outbox, its relay (RabbitMQ or in-process) and the consumer
that keeps each user's summary materialized. See docs/events.md."""
