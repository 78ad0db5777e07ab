"""Imports every table module, so Base.metadata knows the whole schema."""

from server import idempotency  # noqa: F401
from server.auth import models as auth_models  # noqa: F401
from server.catalog import models as catalog_models  # noqa: F401
from server.events import models as events_models  # noqa: F401
from server.logs import models as logs_models  # noqa: F401
from server.training import models as training_models  # noqa: F401
