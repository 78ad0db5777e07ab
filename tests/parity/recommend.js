#!/usr/bin/env node
// An independent client of repwise's recommender, in JavaScript: what a mobile port must match.
//
// It knows nothing of the Python SDK. It loads the protos from proto/, downloads the user's
// ModelBundle over gRPC (or takes one from a test-vectors file), and recommends from the
// bundle alone, as DESIGN.md §3 and client_sdk/model.py + client_sdk/recommend.py say.
//
//   node tests/parity/recommend.js --target HOST:PORT --email E [--password P] [--scenarios F]
//       Signs in (AuthService.Login; the password may come from REPWISE_PASSWORD instead),
//       calls TrainingService.GetModelBundle with the bearer token, and answers the scenarios
//       read from F (default: standard input).
//   node tests/parity/recommend.js --vectors tests/parity/vectors.json [--check]
//       Takes the bundle and the scenarios from a test-vectors file (client_sdk/parity.py);
//       with --check, compares with their expected top k and exits 1 on any difference.
//
// Scenarios are JSON, {"scenarios": [...]} (or a bare array), each:
//   {"name": "...", "history": [{"exercise_id", "workout_id", "workout_start"}, ...],
//    "current_workout": ["exercise id", ...], "now": <epoch s>, "equipment": [...] | null,
//    "k": 10}
// history is what the client has logged (oldest first): at least the workouts started after
// the bundle's stats_time and those of the last recent_days. Prints
//   {"model_version": ..., "results": [{"name": ..., "top_k": [{"exercise_id", "score"}]}]}
//
// Every constant of the model comes from the bundle: feature_names, state_names,
// coefficients, weights and sequence_parameters. Only units (seconds in a day and an hour)
// and the "body_only" equipment (what everyone has) are written here.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const DAY = 86400; // seconds
const HOUR = 3600; // seconds
const TERMS = ['routine', 'transition', 'similarity', 'frequency', 'recency'];
const EVERYONE_HAS = 'body_only';

// --- protos and gRPC -----------------------------------------------------------------------

function loadProtos() {
  const definition = protoLoader.loadSync(
    ['repwise/v1/auth.proto', 'repwise/v1/training.proto'],
    {
      includeDirs: [PROTO_DIR],
      keepCase: true, // field names as in the .proto files
      longs: String, // int64 as decimal strings, converted where used
      enums: String,
      defaults: true, // unset scalars read as 0, "", false; repeated as []
      oneofs: true,
    },
  );
  return { definition, v1: grpc.loadPackageDefinition(definition).repwise.v1 };
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    client[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function downloadBundle(v1, target, email, password) {
  const credentials = grpc.credentials.createInsecure();
  const auth = new v1.AuthService(target, credentials);
  const training = new v1.TrainingService(target, credentials);
  try {
    const login = await unary(auth, 'Login', { email, password }, new grpc.Metadata());
    const metadata = new grpc.Metadata();
    metadata.add('authorization', `Bearer ${login.access_token}`);
    const response = await unary(training, 'GetModelBundle', { known_version: 0 }, metadata);
    if (!response.bundle) throw new Error('the server sent no bundle');
    return response.bundle;
  } finally {
    auth.close();
    training.close();
  }
}

// A serialized ModelBundle decoded as the gRPC call decodes it: wrapped as field 2
// (length-delimited) of a GetModelBundleResponse, through that method's deserializer.
function decodeBundle(definition, bytes) {
  const header = [0x12];
  for (let n = bytes.length; ; n = Math.floor(n / 128)) {
    if (n < 128) {
      header.push(n);
      break;
    }
    header.push((n % 128) | 0x80);
  }
  const method = definition['repwise.v1.TrainingService'].GetModelBundle;
  return method.responseDeserialize(Buffer.concat([Buffer.from(header), bytes])).bundle;
}

// --- the bundle ------------------------------------------------------------------------------

function seconds(timestamp) {
  return timestamp ? Number(timestamp.seconds) + timestamp.nanos / 1e9 : 0;
}

function rowsOf(matrix, what) {
  if (matrix.values.length !== matrix.rows * matrix.cols) {
    throw new Error(`${what}: ${matrix.values.length} values for ${matrix.rows} × ${matrix.cols}`);
  }
  const rows = [];
  for (let i = 0; i < matrix.rows; i++) {
    rows.push(matrix.values.slice(i * matrix.cols, (i + 1) * matrix.cols));
  }
  return rows;
}

// The state vector's layout from state_names: "last:<feature>", "workout:<feature>",
// "recent:<feature>" (a block and a feature_names entry) or "bias".
function stateLayout(stateNames, featureNames) {
  const featureIndex = new Map(featureNames.map((name, i) => [name, i]));
  return stateNames.map((name) => {
    if (name === 'bias') return { block: 'bias', feature: -1 };
    const colon = name.indexOf(':');
    const block = name.slice(0, colon);
    const feature = featureIndex.get(name.slice(colon + 1));
    if (!['last', 'workout', 'recent'].includes(block) || feature === undefined) {
      throw new Error(`state dimension ${JSON.stringify(name)} is not one this client knows`);
    }
    return { block, feature };
  });
}

// Sequence statistics (DESIGN.md §3), as of refTime:
//   exercises: row → {count, decayed (count decayed to refTime), lastTime}
//   transitions: from row → (to row → {count, lastTime, lastIndex}), lastIndex the ordinal
//     (from 1) of the latest such transition among all transitions out of `from`
//   lastExercise: the row of the latest entry (-1 for none), source of the next transition.
function modelFromBundle(bundle) {
  const featureNames = bundle.feature_names;
  const ids = bundle.exercise_ids;
  const row = new Map(ids.map((id, i) => [id, i]));
  const phi = rowsOf(bundle.catalog_features, 'catalog_features');
  const coefficients = rowsOf(bundle.coefficients, 'coefficients');
  if (phi.length !== ids.length || bundle.catalog_features.cols !== featureNames.length) {
    throw new Error('catalog_features does not match exercise_ids × feature_names');
  }
  if (coefficients.length !== bundle.state_names.length ||
      bundle.coefficients.cols !== featureNames.length) {
    throw new Error('coefficients does not match state_names × feature_names');
  }
  if (!bundle.sequence_parameters || !bundle.weights) {
    throw new Error('the bundle carries no sequence_parameters or weights');
  }
  const exercises = new Map();
  for (const s of bundle.exercise_stats) {
    if (!row.has(s.exercise_id)) continue;
    exercises.set(row.get(s.exercise_id), {
      count: Number(s.count),
      decayed: s.decayed_count,
      lastTime: seconds(s.last_time),
    });
  }
  const transitions = new Map();
  for (const t of bundle.transitions) {
    if (!row.has(t.from_exercise_id) || !row.has(t.to_exercise_id)) continue;
    const from = row.get(t.from_exercise_id);
    if (!transitions.has(from)) transitions.set(from, new Map());
    transitions.get(from).set(row.get(t.to_exercise_id), {
      count: t.count,
      lastTime: seconds(t.last_time),
      lastIndex: Number(t.last_index),
    });
  }
  return {
    version: bundle.model_version,
    ids,
    row,
    featureNames,
    phi,
    coefficients,
    layout: stateLayout(bundle.state_names, featureNames),
    weights: TERMS.map((term) => bundle.weights[term]),
    params: bundle.sequence_parameters,
    stats: {
      refTime: seconds(bundle.stats_time),
      lastExercise: row.has(bundle.last_exercise_id) ? row.get(bundle.last_exercise_id) : -1,
      exercises,
      transitions,
    },
    // Logged entries {time, workout, exercise}, oldest first: they feed the state.
    recent: [],
  };
}

// --- sequence statistics --------------------------------------------------------------------

// The statistics of the old entries followed by `entries` (all after them, oldest first),
// as of refTime. The old decayed counts decay to refTime; each entry adds 2^(−age/half-life).
function extendStats(stats, entries, refTime, params) {
  if (entries.length === 0) return stats;
  const halfLife = params.frequency_half_life_days * DAY;
  const decay = Math.pow(2, -(refTime - stats.refTime) / halfLife);
  const exercises = new Map();
  for (const [e, s] of stats.exercises) {
    exercises.set(e, { count: s.count, decayed: s.decayed * decay, lastTime: s.lastTime });
  }
  const transitions = new Map();
  // Transitions out of each exercise so far: new ones continue the ordinals.
  const outCount = new Map();
  for (const [from, followers] of stats.transitions) {
    const copy = new Map();
    let total = 0;
    for (const [to, t] of followers) {
      copy.set(to, { ...t });
      total += t.count;
    }
    transitions.set(from, copy);
    outCount.set(from, total);
  }
  let previous = stats.lastExercise;
  for (const entry of entries) {
    if (!exercises.has(entry.exercise)) {
      exercises.set(entry.exercise, { count: 0, decayed: 0, lastTime: -Infinity });
    }
    const s = exercises.get(entry.exercise);
    s.count += 1;
    s.decayed += Math.pow(2, -(refTime - entry.time) / halfLife);
    s.lastTime = Math.max(s.lastTime, entry.time);
    if (previous >= 0) {
      // Across workout boundaries: the first exercise of a workout follows the last of the
      // one before.
      const ordinal = (outCount.get(previous) || 0) + 1;
      outCount.set(previous, ordinal);
      if (!transitions.has(previous)) transitions.set(previous, new Map());
      const followers = transitions.get(previous);
      if (!followers.has(entry.exercise)) {
        followers.set(entry.exercise, { count: 0, lastTime: -Infinity, lastIndex: 0 });
      }
      const t = followers.get(entry.exercise);
      t.count += 1;
      t.lastTime = Math.max(t.lastTime, entry.time);
      t.lastIndex = Math.max(t.lastIndex, ordinal);
    }
    previous = entry.exercise;
  }
  return { refTime, lastExercise: previous, exercises, transitions };
}

// Adds logged history (oldest first). Entries of workouts started after the statistics are
// added to them; all feed the state. Exercises the bundle does not know are skipped.
function observe(model, history) {
  const fresh = [];
  for (const h of history) {
    if (!model.row.has(h.exercise_id)) continue;
    const exercise = model.row.get(h.exercise_id);
    const entry = { time: h.workout_start, workout: h.workout_id, exercise };
    model.recent.push(entry);
    // As the SDK: the server's float seconds may differ from the Timestamp's by rounding.
    if (entry.time > model.stats.refTime + 0.001) fresh.push(entry);
  }
  if (fresh.length) {
    const newest = fresh.reduce((t, e) => Math.max(t, e.time), -Infinity);
    const refTime = Math.max(newest, model.stats.refTime);
    model.stats = extendStats(model.stats, fresh, refTime, model.params);
  }
  model.recent.sort((a, b) => a.time - b.time); // stable: a workout keeps its order
}

// --- the state and the predicted features --------------------------------------------------

function meanOf(rows, size) {
  const mean = new Array(size).fill(0);
  for (const r of rows) for (let j = 0; j < size; j++) mean[j] += r[j];
  return rows.length ? mean.map((v) => v / rows.length) : mean;
}

// s: φ of the last exercise, the mean φ of the current workout's exercises so far, the mean
// φ of the exercises of the recent_days before the workout, and 1, laid out by state_names.
function stateVector(model, history, done, start) {
  const size = model.featureNames.length;
  const zeros = new Array(size).fill(0);
  let last = zeros;
  if (done.length) last = model.phi[done[done.length - 1]];
  else if (history.length) last = model.phi[history[history.length - 1].exercise];
  // "Recent" is measured in whole seconds since the earliest entry, as model.states() does:
  // floor(t − t0) ≥ floor(start − t0) − trunc(recent_days · DAY).
  const t0 = history.length ? history[0].time : start;
  const from = Math.floor(start - t0) - Math.trunc(model.params.recent_days * DAY);
  const recent = history.filter((e) => Math.floor(e.time - t0) >= from);
  const blocks = {
    last,
    workout: meanOf(done.map((e) => model.phi[e]), size),
    recent: meanOf(recent.map((e) => model.phi[e.exercise]), size),
  };
  return model.layout.map(({ block, feature }) => (block === 'bias' ? 1 : blocks[block][feature]));
}

// ŷ = sᵀW, scaled to unit length (zero stays zero).
function predictedFeatures(state, coefficients) {
  const y = new Array(coefficients[0].length).fill(0);
  for (let i = 0; i < state.length; i++) {
    for (let j = 0; j < y.length; j++) y[j] += state[i] * coefficients[i][j];
  }
  const norm = Math.sqrt(y.reduce((sum, v) => sum + v * v, 0));
  return norm > 0 ? y.map((v) => v / norm) : y;
}

function dot(a, b) {
  let sum = 0;
  for (let j = 0; j < a.length; j++) sum += a[j] * b[j];
  return sum;
}

// --- candidates and scores ------------------------------------------------------------------

// The user's own exercises (those with statistics), plus catalog ones usable with their
// equipment (needing no equipment, or some they have); never one done in this workout.
function candidates(model, done, equipment) {
  const columns = [];
  const usable = [];
  if (equipment !== null && equipment !== undefined) {
    const have = new Set([...equipment, EVERYONE_HAS].map((e) => `equipment:${e}`));
    model.featureNames.forEach((name, j) => {
      if (!name.startsWith('equipment:')) return;
      columns.push(j);
      if (have.has(name)) usable.push(j);
    });
  }
  const doneSet = new Set(done);
  const out = [];
  for (let e = 0; e < model.ids.length; e++) {
    if (doneSet.has(e)) continue;
    const needsAny = columns.some((j) => model.phi[e][j] !== 0);
    const hasOne = usable.some((j) => model.phi[e][j] !== 0);
    if (model.stats.exercises.has(e) || !needsAny || hasOne) out.push(e);
  }
  return out;
}

// Routine, transition, frequency and recency of candidate e after the last exercise `last`
// (null for none), at workoutStart:
//   routine r(e|a) = routine_decay ^ (transitions out of a − last_index(a → e)); 0 if never
//   transition P(e|a) = (c(a, e) + α·share(e)) / (c(a) + α), α = transition_smoothing,
//     share(e) = e's decayed count over the sum of all
//   frequency f(e) = e's decayed count over the largest
//   recency d(e) = 1 − (time since e was last done) / recovery_hours, clipped to [0, 1]
function sequenceTerms(stats, last, candidateRows, workoutStart, params) {
  const halfLife = params.frequency_half_life_days * DAY;
  const decay = Math.pow(2, -(workoutStart - stats.refTime) / halfLife);
  let top = 0;
  let total = 0;
  for (const s of stats.exercises.values()) {
    top = Math.max(top, s.decayed);
    total += s.decayed;
  }
  top *= decay;
  total *= decay;
  const followers = (last !== null && stats.transitions.get(last)) || new Map();
  let fromLast = 0;
  for (const t of followers.values()) fromLast += t.count;
  const alpha = params.transition_smoothing;
  return candidateRows.map((e) => {
    const s = stats.exercises.get(e);
    const decayed = (s ? s.decayed : 0) * decay;
    const share = total > 0 ? decayed / total : decayed;
    const ago = workoutStart - (s ? s.lastTime : -Infinity);
    const t = followers.get(e);
    const count = t ? t.count : 0;
    return {
      routine: count > 0 ? Math.pow(params.routine_decay, fromLast - t.lastIndex) : 0,
      transition: (count + alpha * share) / (fromLast + alpha),
      frequency: top > 0 ? decayed / top : 0,
      recency: Math.min(Math.max(1 - ago / (params.recovery_hours * HOUR), 0), 1),
    };
  });
}

// The k best next exercises: score = w_r·r + w_t·P + w_s·cos(ŷ, φ(e)) + w_f·f − w_d·d.
function recommend(model, { k, current_workout: currentWorkout = [], now, equipment = null }) {
  if (!(k > 0)) throw new Error('k must be positive');
  const start = now;
  const done = currentWorkout.filter((id) => model.row.has(id)).map((id) => model.row.get(id));
  // History for the state: the last recent_days before the workout, else the latest entry,
  // else (nothing logged here) the bundle's last exercise.
  const before = model.recent.filter((e) => e.time < start);
  let history = before.filter((e) => e.time >= start - model.params.recent_days * DAY);
  if (!history.length) history = before.slice(-1);
  if (!history.length && model.stats.lastExercise >= 0) {
    const last = model.stats.lastExercise;
    history = [{ time: model.stats.exercises.get(last).lastTime, workout: '', exercise: last }];
  }
  const state = stateVector(model, history, done, start);
  const predicted = predictedFeatures(state, model.coefficients);

  // The workout under way counts in the statistics, as of its start.
  const current = done.map((exercise) => ({ time: start, workout: '', exercise }));
  const stats = extendStats(model.stats, current, start, model.params);
  let last = stats.lastExercise >= 0 ? stats.lastExercise : null;
  if (done.length) last = done[done.length - 1];

  const rows = candidates(model, done, equipment);
  const terms = sequenceTerms(stats, last, rows, start, model.params);
  const [wr, wt, ws, wf, wd] = model.weights;
  const scored = rows.map((e, i) => {
    const t = terms[i];
    const similarity = dot(model.phi[e], predicted);
    return {
      row: e,
      score:
        wr * t.routine + wt * t.transition + ws * similarity + wf * t.frequency - wd * t.recency,
    };
  });
  // Best first; equal scores keep catalog order.
  scored.sort((a, b) => (a.score === b.score ? a.row - b.row : b.score - a.score));
  return scored.slice(0, k).map((s) => ({ exercise_id: model.ids[s.row], score: s.score }));
}

function answer(bundle, scenarios) {
  return {
    model_version: String(bundle.model_version),
    results: scenarios.map((scenario) => {
      const model = modelFromBundle(bundle);
      observe(model, scenario.history || []);
      return { name: scenario.name || '', top_k: recommend(model, scenario) };
    }),
  };
}

// --- command line ---------------------------------------------------------------------------

function parseArgs(argv) {
  const args = { check: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--check') args.check = true;
    else if (['--target', '--email', '--password', '--scenarios', '--vectors'].includes(flag)) {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      args[flag.slice(2)] = argv[++i];
    } else throw new Error(`unknown argument ${flag}`);
  }
  return args;
}

function mismatches(expected, actual, relativeTolerance) {
  const problems = [];
  const want = expected.map((e) => e.exercise_id);
  const got = actual.map((a) => a.exercise_id);
  if (JSON.stringify(want) !== JSON.stringify(got)) problems.push(`ids differ: ${got} != ${want}`);
  expected.forEach((e, i) => {
    const a = actual[i];
    const scale = a ? Math.max(Math.abs(a.score), Math.abs(e.score)) : 0;
    if (a && !(Math.abs(a.score - e.score) <= relativeTolerance * scale)) {
      problems.push(`rank ${i + 1}: score ${a.score} != ${e.score}`);
    }
  });
  return problems;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { definition, v1 } = loadProtos();
  let bundle;
  let scenarios;
  let vectors = null;
  if (args.vectors) {
    vectors = JSON.parse(fs.readFileSync(args.vectors, 'utf8'));
    bundle = decodeBundle(definition, Buffer.from(vectors.bundle.base64, 'base64'));
    scenarios = vectors.scenarios;
  } else {
    if (!args.target || !args.email) throw new Error('give --target and --email, or --vectors');
    const password = args.password !== undefined ? args.password : process.env.REPWISE_PASSWORD;
    if (password === undefined) throw new Error('give --password or set REPWISE_PASSWORD');
    const source = args.scenarios && args.scenarios !== '-' ? args.scenarios : 0; // 0: stdin
    const input = JSON.parse(fs.readFileSync(source, 'utf8'));
    scenarios = Array.isArray(input) ? input : input.scenarios;
    bundle = await downloadBundle(v1, args.target, args.email, password);
  }
  const out = answer(bundle, scenarios);
  process.stdout.write(JSON.stringify(out) + '\n');
  if (args.check) {
    if (!vectors) throw new Error('--check needs --vectors');
    let failed = 0;
    vectors.scenarios.forEach((scenario, i) => {
      const actual = out.results[i].top_k;
      for (const problem of mismatches(scenario.expected, actual, vectors.relative_tolerance)) {
        console.error(`${scenario.name}: ${problem}`);
        failed++;
      }
    });
    if (failed) process.exit(1);
    console.error(`${vectors.scenarios.length} scenarios match`);
  }
}

main().catch((error) => {
  console.error(`recommend.js: ${error.message || error}`);
  process.exit(1);
});
