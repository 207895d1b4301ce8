'use strict';
// A real Dubbo consumer written by someone else: the npm sofa-rpc-node RpcClient speaking
// Dubbo through dubbo-remoting (hessian2), calling one fixed address (no registry), or
// the providers sofa-rpc-node's own ZookeeperRegistry finds, for dubbo-mesh's tests
// (agent-consumer/tests/mesh_sofa_dubbo_in.rs).
//
// Usage: node client.js HOST:PORT [SCENARIO [ARG]]
//        node client.js --zk ZK_ADDRESS [SCENARIO [ARG]]
//
// --zk ZK_ADDRESS (e.g. `127.0.0.1:2181/dubbo`: ZooKeeper servers, then the root path):
// each service's providers are read from <root>/<interface>/providers (and watched) by
// sofa-rpc-node's ZookeeperRegistry instead of one fixed address; the calls and the
// output are the same. A service with no provider there yet: a call answers sofa's
// RpcNoProviderError (as data, like any failed call). ZooKeeper not reachable in 20s:
// exit 1.
//
// What sofa-rpc-node 2.10.0 requires of a provider node to pick it and call it
// (lib/registry/zk/data_client.js, lib/client/consumer.js, address_group.js,
// loadbalancer/weight_rr.js, connection/rpc.js; dubbo-remoting lib/encoder.js):
// - The child name is decoded with decodeURIComponent, then parsed with WHATWG
//   `new URL()`; if either throws for any child (a bad %-escape, a name that is not an
//   absolute URL such as a bare "127.0.0.1:20880") the watch callback throws (an `error`
//   event of the registry) and that interface's list is never delivered, the good nodes
//   beside it included: the consumer never becomes ready (here: exit 1 after 20s).
// - Filters (data_client.js _isMatch), applied with the FIRST subscriber's config for an
//   interface in this process (the watch is kept per interface, not per version/group):
//   `interface` param (else the URL path without its leading "/"), when present, must
//   equal the interface; `category`, when present, must be "providers"; `enabled`, when
//   present, must be exactly "true"; `group` (else `default.group`) and `version` (else
//   `default.version`) are compared only when both the consumer's and the node's are
//   non-empty. So no param is required: a bare `dubbo://HOST:PORT` is accepted.
// - HOST and PORT: Node's legacy url.parse(url, true) of the decoded name (prefixed
//   "bolt://" if it has no "://"); no port -> 12200. The client connects to
//   hostname:port; connections, weights and fault state are keyed by "host:port".
// - The scheme is not checked at all (dubbo://, bolt://, anything): the wire protocol is
//   the one the client was built with (dubbo-remoting here); `protocol` is ignored.
// - `serialization`, when present, picks the codec (dubbo-remoting only has "hessian2";
//   any other value makes every request on that connection fail to encode).
// - `weight` and all other params are ignored (weights are sofa's own, from health).
// - Requests carry the consumer's interface/version (not the node's), sofa's
//   round-robin picks among the matching nodes; nodes added later are picked up.
// More, with a real node name sofa writes: README-zk.md.
//
// Without SCENARIO, a JSON array of steps is read from stdin and run one after the other;
// each step prints one JSON line:
//   { "service": S, "version": V, "group": G, "method": M, "args": [...],
//     "attachments": {...}, "timeout": MS }
//       -> { "step", "call", "status", "value", "error", "attachments", "body" }
//          status: the Dubbo status byte of the answer (null if none came);
//          value: the result as hessian.js decoded it; error: { name, message, causes }
//          (a provider exception: name is its Java class); attachments: the response's
//          (result flags 3..5), or null; body: the answer's body (after the 16-byte
//          header) in base64, so that answers can be compared byte for byte.
//     `args` items are hessian.js values ({ "$class": ..., "$": ... } for typed ones);
//     `attachments` become the request's attachments (sofa-rpc-node's `requestProps`).
//     version defaults to "0.0.0", group to "" (sofa-rpc-node's own defaults, "1.0" and
//     "SOFA", are not what a Dubbo provider exports).
//   { "heartbeat": true }
//       -> { "step", "heartbeat": { "same_id", "frame" } }: the library's own heartbeat
//          (RpcConnection#heartbeat) and the reply it got; frame: the reply in base64, its
//          id bytes zeroed.
//
// Scenarios:
//   pipeline N  N calls of IHelloService.hash("p<i>") issued at once (on the one
//               connection the client keeps per address); a line per call,
//               { "i", "value" } or { "i", "error", "status" }, then { "pipeline":
//               { "ok", "failed", "connects", "connections", "peak_outstanding" } }.
//               peak_outstanding: the most requests sent on the connection and not
//               yet answered, seen as answers came in.
//   stream C    C concurrent callers calling IHelloService.hash("s<i>") until stdin
//               closes; a line per call as it completes, { "i", "value" } or
//               { "i", "error", "status" }, then { "stream": { "ok", "failed",
//               "connects" } }.
//
// Exits 0 once all is printed (a failed call is a result, not a failure of the script).

const { RpcClient } = require('sofa-rpc-node').client;
const RpcConnection = require('sofa-rpc-node/lib/client/connection/rpc');
const DynamicConfig = require('sofa-rpc-node/lib/client/dynamic_config');
const protocol = require('dubbo-remoting');
const dubboProtocol = require('dubbo-remoting/lib/protocol');

const RACE = 'com.alibaba.dubbo.performance.demo.provider.IHelloService';

const argv = process.argv.slice(2);
let zkAddress = null;
if (argv[0] === '--zk') {
  zkAddress = argv[1];
  argv.splice(0, 2);
}
const [ address, scenario, scenarioArg ] = zkAddress ? [ null, ...argv ] : argv;
if (zkAddress ? !/^[^/]+\/./.test(zkAddress) : (!address || !/^[^:]+:\d+$/.test(address))) {
  console.error('usage: node client.js (HOST:PORT | --zk ZKHOST:PORT/ROOT) [pipeline N | stream C]' +
    ' (steps as JSON on stdin)');
  process.exit(2);
}

// The test decides what failed, not the library: its circuit breaker stays out of the way.
DynamicConfig.instance.circuitBreaker.forceClosed = true;

// Keep each answer's raw frame beside what dubbo-remoting decoded from it (the decoder
// calls `protocol.decode` through the module's exports).
const originalDecode = dubboProtocol.decode;
dubboProtocol.decode = (buf, options) => {
  const ret = originalDecode(buf, options);
  if (ret.data && typeof ret.data === 'object') {
    Object.defineProperty(ret.data, 'raw', { value: Buffer.from(buf), enumerable: false });
  }
  ret.raw = Buffer.from(buf);
  return ret;
};

// How many connections were opened, and the most requests outstanding on one.
let connects = 0;
let peakOutstanding = 0;
const originalConnect = RpcConnection.prototype._connect;
RpcConnection.prototype._connect = function _connect() {
  connects++;
  return originalConnect.call(this);
};
const originalHandleResponse = RpcConnection.prototype._handleResponse;
RpcConnection.prototype._handleResponse = function _handleResponse(res) {
  peakOutstanding = Math.max(peakOutstanding, this._sentReqs.size);
  return originalHandleResponse.call(this, res);
};

const logger = {
  info() {},
  debug() {},
  warn(...args) { console.error('[warn]', ...args); },
  error(...args) { console.error('[error]', ...args); },
};
let registry;
if (zkAddress) {
  const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
  // Under the registry, cluster-client logs INFO lines through its default egg-logger to
  // stdout, which is ours: send them to stderr.
  const { ConsoleTransport } = require('egg-logger');
  require('cluster-client/lib/default_logger').set('console', new ConsoleTransport({
    level: 'INFO', stderrLevel: 'INFO', formatter: require('egg-logger/lib/utils').consoleFormatter,
  }));
  registry = new ZookeeperRegistry({ logger, address: zkAddress });
  registry.on('error', err => console.error('[zk registry error]', err && err.message));
}
const client = new RpcClient({ logger, protocol, responseTimeout: 5000, registry });
client.on('error', err => console.error('[client error]', err && err.message));
// Hand each call's whole result (value, error, response attachments, raw frame) to the
// caller through the request's `ctx`.
client.use(async (ctx, next) => {
  try {
    await next();
  } finally {
    if (ctx.req.ctx) ctx.req.ctx.res = ctx.res;
  }
});

const consumers = new Map();
async function consumerOf(service, version, group) {
  const key = `${service}:${version}@${group}`;
  let consumer = consumers.get(key);
  if (!consumer) {
    consumer = client.createConsumer(registry
      ? { interfaceName: service, version, group }
      : { interfaceName: service, version, group, serverHost: address });
    consumers.set(key, consumer);
  }
  if (!registry) {
    await consumer.ready();
    return consumer;
  }
  // The registry hands the consumer no list at all (so it is never ready) when a node's
  // name does not parse (see the top of this file): fail then, rather than hang.
  let timer;
  await Promise.race([
    consumer.ready(),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no provider list for ${key} from ZooKeeper in 20s`)), 20000);
    }),
  ]);
  clearTimeout(timer);
  return consumer;
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj, replacer) + '\n');
}

function replacer(key, value) {
  if (typeof value === 'bigint') return value.toString();
  if (value && value.type === 'Buffer' && Array.isArray(value.data)) {
    return { $bytes: Buffer.from(value.data).toString('base64') };
  }
  return value;
}

// An error as data: its name (a provider exception's Java class) and message, and the
// chain of its causes.
function describeError(err) {
  if (!err) return null;
  const out = { name: err.name || 'Error', message: err.message === undefined ? null : err.message };
  const causes = [];
  let cause = err.cause;
  const seen = new Set([ err ]);
  while (cause && typeof cause === 'object' && !seen.has(cause) && causes.length < 8) {
    seen.add(cause);
    causes.push({ name: cause.name || null, message: cause.message === undefined ? null : cause.message });
    cause = cause.cause;
  }
  if (causes.length) out.causes = causes;
  return out;
}

// One call; never throws: the result, or what went wrong, as data.
async function call(step) {
  const version = step.version === undefined ? '0.0.0' : step.version;
  const group = step.group === undefined ? '' : step.group;
  const consumer = await consumerOf(step.service, version, group);
  const holder = {};
  const options = { ctx: holder };
  if (step.attachments) options.requestProps = step.attachments;
  if (step.timeout) options.responseTimeout = step.timeout;
  const result = {
    call: `${step.service}:${version}@${group}#${step.method}`,
    status: null,
    value: null,
    error: null,
    attachments: null,
    body: null,
  };
  try {
    result.value = await consumer.invoke(step.method, step.args || [], options);
  } catch (err) {
    result.error = describeError(err);
  }
  const res = holder.res;
  if (res) {
    if (res.responseProps) result.attachments = res.responseProps;
    if (res.raw) {
      result.status = res.raw[3];
      result.body = res.raw.subarray(16).toString('base64');
    }
  }
  return result;
}

function theConnection() {
  const conns = Array.from(client.connectionManager.connections.values());
  if (conns.length !== 1) throw new Error(`expected one connection, have ${conns.length}`);
  return conns[0];
}

// The library's own heartbeat (what its scheduler sends on an idle connection), and the
// reply the server gave.
async function heartbeat() {
  const conn = theConnection();
  let sentId = null;
  const encoder = conn._encoder;
  const originalWrite = encoder.writeHeartbeat;
  encoder.writeHeartbeat = function writeHeartbeat(id, hb, cb) {
    sentId = id;
    return originalWrite.call(this, id, hb, cb);
  };
  const ack = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no heartbeat reply in 3s')), 3000);
    conn._decoder.once('heartbeat_ack', obj => {
      clearTimeout(timer);
      resolve(obj);
    });
  });
  const idle = conn.options.maxIdleTime;
  conn.options.maxIdleTime = -1; // idle "long enough" right now
  conn.heartbeat();
  conn.options.maxIdleTime = idle;
  encoder.writeHeartbeat = originalWrite;
  try {
    const obj = await ack;
    const frame = Buffer.from(obj.raw);
    frame.fill(0, 4, 12);
    return { same_id: sentId !== null && obj.packetId === sentId, frame: frame.toString('base64') };
  } catch (err) {
    return { error: describeError(err) };
  }
}

async function runSteps(steps) {
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    if (step.heartbeat) {
      print({ step: i, heartbeat: await heartbeat() });
    } else {
      print(Object.assign({ step: i }, await call(step)));
    }
  }
}

// IHelloService.hash(arg) as one line's fields: { value } or { error, status }.
async function hashCall(arg) {
  const r = await call({ service: RACE, method: 'hash', args: [ arg ] });
  return r.error ? { error: r.error, status: r.status } : { value: r.value };
}

async function pipeline(n) {
  await consumerOf(RACE, '0.0.0', ''); // connect first: then every call goes out at once
  let ok = 0;
  let failed = 0;
  const calls = [];
  for (let i = 0; i < n; i++) {
    calls.push(hashCall(`p${i}`).then(r => {
      if (r.error) failed++; else ok++;
      print(Object.assign({ i }, r));
    }));
  }
  await Promise.all(calls);
  print({ pipeline: {
    ok, failed, connects, connections: client.connectionManager.connections.size,
    peak_outstanding: peakOutstanding,
  } });
}

async function stream(concurrency) {
  await consumerOf(RACE, '0.0.0', '');
  let stop = false;
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => { stop = true; });
  process.stdin.on('error', () => { stop = true; });
  process.stdin.resume();
  let next = 0;
  let ok = 0;
  let failed = 0;
  async function worker() {
    while (!stop) {
      const i = next++;
      const r = await hashCall(`s${i}`);
      if (r.error) failed++; else ok++;
      print(Object.assign({ i }, r));
      // A call that fails at once (no provider yet) never leaves the microtask queue: let
      // stdin's end and ZooKeeper's watches in.
      if (r.error) await new Promise(resolve => setImmediate(resolve));
    }
  }
  const workers = [];
  for (let w = 0; w < concurrency; w++) workers.push(worker());
  await Promise.all(workers);
  print({ stream: { ok, failed, connects } });
}

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', c => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

async function main() {
  if (registry) {
    let timer;
    await Promise.race([
      registry.ready(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`ZooKeeper ${zkAddress} not reachable in 20s`)), 20000);
      }),
    ]);
    clearTimeout(timer);
  }
  if (scenario === 'pipeline') {
    await pipeline(Number(scenarioArg || 1000));
  } else if (scenario === 'stream') {
    await stream(Number(scenarioArg || 8));
  } else if (scenario) {
    throw new Error(`unknown scenario ${scenario}`);
  } else {
    const steps = JSON.parse(await readStdin());
    if (!Array.isArray(steps)) throw new Error('stdin: expected a JSON array of steps');
    await runSteps(steps);
  }
}

main().then(() => {
  client.close();
  if (!registry) process.exit(0);
  // Close the ZooKeeper session, so the consumer nodes sofa wrote go at once.
  setTimeout(() => process.exit(0), 2000).unref();
  Promise.resolve(registry.close()).catch(() => {}).then(() => process.exit(0));
}, err => {
  console.error(err && err.stack || err);
  process.exit(1);
});
