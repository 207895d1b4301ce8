'use strict';
// A real Dubbo provider written by someone else (sofa-rpc-node + dubbo-remoting, hessian2),
// used by dubbo-mesh's tests.
//
// Usage: node provider.js PORT [--zk ZK_ADDRESS [--host HOST]]
//
// Without --zk: prints "listening PORT" once it accepts connections (no registry).
// With --zk (e.g. `--zk 127.0.0.1:2181/dubbo`: ZooKeeper servers, then the root path):
// also registers every service below through sofa-rpc-node's own ZookeeperRegistry
// (the nodes are written by sofa's code, not ours), and prints "listening PORT
// registered ZK_ADDRESS" only once RpcServer#publish resolved and each service's node was
// read back from ZooKeeper (~0.3s). The URL registered names HOST
// (default 127.0.0.1; sofa's own default is the machine's first IPv4). Nothing else is
// written to stdout after that line (a reader may close the pipe); errors go to stderr.
// If registration is not done within 30s: a message on stderr and exit 1, no ready line.
// SIGTERM / SIGINT with --zk: the nodes are removed (unPublish) before exit 0 (<= ~5s); after
// SIGKILL the ephemeral nodes stay until the ZooKeeper session expires (node-zookeeper-
// client's default session timeout: 30s).
//
// What sofa-rpc-node 2.10.0 writes, one ephemeral node per service (interface, version)
// under <root>/<interface>/providers/, named encodeURIComponent(url):
//   dubbo://HOST:PORT?startTime=<ms>&pid=<pid>&uniqueId=&dynamic=true&appName=
//     &timeout=3000&serialization=hessian2&weight=100&accepts=100000&language=nodejs
//     &rpcVer=50400&protocol=dubbo&interface=<interface>&version=<version>&group=
// No path after the port (Dubbo writes /<interface>); the interface is the `interface`
// param; `group=` is empty here (this file sets the server group to '' rather than
// sofa's default "SOFA"); the node's data is empty. A real node name from this file is in
// README-zk.md. What sofa's client needs from a node to pick and call it: see client.js.

const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const Response = require('dubbo-remoting/lib/protocol/response');

// dubbo-remoting 2.1.4 drops the result flag when the value is falsy (0, false, '', null):
// Java writes `91 90` for 0 where it writes `90`. Mend it as Java does: a flag first.
// It also never writes response attachments (flags 3..5); a result made by
// `withAttachments` below is written with them, as Java 2.7 writes them: flag, value
// (none for null), then the attachment map.
const { getSerializationByName } = require('dubbo-remoting/lib/serialize');
const originalEncode = Response.prototype.encode;
const replyAttachments = new WeakMap();
const NULL_RESULT = Symbol('null result');
function withAttachments(value, attachments) {
  const result = value === null ? { $class: 'java.lang.Object', $: null, [NULL_RESULT]: true } : value;
  replyAttachments.set(result, attachments);
  return result;
}
Response.prototype.encode = function encode(options = {}) {
  const attachments = this.data && typeof this.data === 'object' ? replyAttachments.get(this.data) : undefined;
  if (this.isHeartbeat || this.status !== Response.OK || (this.data && !attachments)) {
    return originalEncode.call(this, options);
  }
  const output = getSerializationByName(options.codecType || 'hessian2').serialize();
  const bytes = output.bytes;
  bytes.put(0xda);
  bytes.put(0xbb);
  bytes.put(output.contentTypeId);
  bytes.put(this.status);
  bytes.putLong(this.id);
  bytes.skip(4);
  if (attachments) {
    if (this.data[NULL_RESULT]) {
      output.writeByte(5); // RESPONSE_NULL_VALUE_WITH_ATTACHMENTS
    } else {
      // RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS or RESPONSE_VALUE_WITH_ATTACHMENTS
      output.writeByte(this.data.$class.includes('Exception') ? 3 : 4);
      output.writeObject(this.data, options.classMap);
    }
    output.writeObject(attachments);
  } else if (this.data === null || this.data === undefined) {
    output.writeByte(2); // RESPONSE_NULL_VALUE
  } else {
    output.writeByte(1); // RESPONSE_VALUE
    output.writeObject(this.data, options.classMap);
  }
  bytes._bytes.writeInt32BE(bytes.position() - 16, 12);
  return output.get();
};

function javaHashCode(s) {
  let h = 0;
  for (let i = 0; i < s.length; i++) {
    h = (Math.imul(31, h) + s.charCodeAt(i)) | 0; // UTF-16 code units, wrapping i32
  }
  return h;
}

const argv = process.argv.slice(2);
function flag(name) {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const value = argv[i + 1];
  if (!value || value.startsWith('--')) {
    console.error(`${name} needs a value`);
    process.exit(2);
  }
  argv.splice(i, 2);
  return value;
}
const zkAddress = flag('--zk');
const publishHost = flag('--host') || '127.0.0.1';
if (argv.length > 1 || (argv[0] && !/^\d+$/.test(argv[0])) || (zkAddress && !/^[^/]+\/./.test(zkAddress))) {
  console.error('usage: node provider.js PORT [--zk HOST:PORT/ROOT [--host HOST]]');
  process.exit(2);
}
const port = Number(argv[0] || 20880);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };
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
// group '': what a Dubbo provider without a group exports (sofa's default is "SOFA"); it
// only changes the `group` param of the registered URL.
const server = new RpcServer({
  logger, port, protocol, version: '0.0.0', group: '', registry, publishAddress: publishHost,
});
if (registry) {
  // sofa's URL takes startTime=Date.now() afresh for each service, and RpcServer#publish
  // waits, per service, for a node whose URL contains that service's own URL — among the
  // nodes filtered by the first service of the interface (one watch per interface). With
  // two versions of one interface (Greeter) registered a millisecond apart, the second
  // never sees its URL and publish() never resolves. One startTime for all avoids that.
  const startTime = Date.now();
  const params = Object.getOwnPropertyDescriptor(RpcServer.prototype, 'params').get;
  Object.defineProperty(server, 'params', {
    get() { return Object.assign(params.call(this), { startTime }); },
  });
}

server.addService({
  interfaceName: 'com.alibaba.dubbo.performance.demo.provider.IHelloService',
  version: '0.0.0',
}, {
  async hash(s) {
    return { $class: 'int', $: javaHashCode(String(s)) };
  },
});

// ---------------------------------------------------------------------------------------
// com.example.ShapeService: the shapes real Dubbo services use (POJOs, lists, maps, null,
// dates, enums, overloads, exceptions), for agent-consumer/tests/mesh_sofa_shapes.rs.
// Values are written with hessian.js conventions ({ $class, $ }).

// The class each decoded argument object arrived with: hessian.js hands handlers plain
// objects, so its decode hook records the class of the classes we check.
const hessian = require('hessian.js');
const arrivedAs = new WeakMap();
for (const cls of [ 'com.example.User', 'com.example.Color' ]) {
  hessian.registerDecodeHandler(cls, result => {
    if (result.$ && typeof result.$ === 'object') arrivedAs.set(result.$, result.$class);
    return result;
  });
}
const fieldsOf = { 'com.example.User': [ 'name', 'age' ], 'com.example.Color': [ 'name' ] };
function expectClass(value, cls) {
  const got = value && typeof value === 'object' ? (arrivedAs.get(value) || 'a map') : typeof value;
  if (got !== cls) throw new Error(`expected ${cls}, got ${got}`);
  const extra = Object.keys(value).filter(k => !fieldsOf[cls].includes(k));
  if (extra.length) throw new Error(`${cls} has no field ${extra.join(', ')}`);
  return value;
}
const user = u => ({ $class: 'com.example.User', $: { name: u.name, age: u.age } });

// sofa-rpc-node finds a method by name only: `this` is the request (see createContext
// below), so an overloaded method picks its body by the descriptor the caller sent.
server.createContext = req => ({ req });
let shapeCalls = 0;
const shapes = {
  // A POJO in, a POJO out: one year older.
  async older(u) {
    expectClass(u, 'com.example.User');
    return user({ name: u.name, age: u.age + 1 });
  },
  // A list of POJOs in, a list out: sorted by age, oldest first, names upper-cased.
  async byAge(list) {
    if (!Array.isArray(list)) throw new Error('expected a list');
    const users = list.map(u => expectClass(u, 'com.example.User'));
    users.sort((a, b) => b.age - a.age);
    return { $class: 'java.util.List', $: users.map(u => user({ name: u.name.toUpperCase(), age: u.age })) };
  },
  // Nested maps in and out: the keys of each level, and the map itself echoed.
  async describe(m) {
    const keys = o => Object.keys(o).sort().map(k => (o[k] && typeof o[k] === 'object' && !Array.isArray(o[k])
      ? { [k]: keys(o[k]) } : k));
    return { $class: 'java.util.Map', $: { keys: keys(m), echo: m } };
  },
  // null in -> null out; a string in -> its upper case.
  async upper(s) {
    return s === null || s === undefined ? null : s.toUpperCase();
  },
  // No arguments: how many ShapeService calls (this one excluded) reached the provider.
  async calls() {
    return { $class: 'int', $: shapeCalls - 1 };
  },
  // A java.util.Date from epoch milliseconds.
  async dateOf(ms) {
    return { $class: 'java.util.Date', $: new Date(Number(ms)) };
  },
  // Enums: hessian writes a Java enum as an object with one field, `name`.
  async color(name) {
    return { $class: 'com.example.Color', $: name, isEnum: true };
  },
  async paint(c) {
    expectClass(c, 'com.example.Color');
    return `painted ${c.name}`;
  },
  // Overloads: add(int, int), add(String, String), add(long, long), add(java.util.List).
  async add(...args) {
    const sig = this.req.data.methodArgSigs.join(',');
    switch (sig) {
      case 'int,int': return { $class: 'int', $: args[0] + args[1] };
      case 'java.lang.String,java.lang.String': return `${args[0]}${args[1]}`;
      case 'long,long': return { $class: 'long', $: Number(args[0]) + Number(args[1]) };
      case 'java.util.List': return { $class: 'int', $: args[0].reduce((a, b) => a + b, 0) };
      default: throw new Error(`no add(${sig})`);
    }
  },
  // Request attachments: dubbo-remoting hands a handler the request's attachment map as
  // `req.data.requestProps`. Answers the value of attachment `key` (null if absent).
  async attachment(key) {
    const value = this.req.data.requestProps[key];
    return value === undefined ? null : value;
  },
  // Response attachments (flags 3..5, see withAttachments): the string upper-cased (or
  // null), a thrown exception object for "reject", with attachments the mesh must pass
  // back as headers and some it must drop (not header-safe, or Dubbo's own `dubbo`).
  async tagged(s) {
    const attachments = {
      echo: String(s), 'X-Trace': 't-9', 'bad key': 'dropped', crlf: 'a\r\nb', dubbo: '2.0.2',
    };
    if (s === null || s === undefined) return withAttachments(null, attachments);
    if (s === 'reject') {
      return withAttachments({ $class: 'com.example.ShapeException', $: { detailMessage: 'tagged' } }, attachments);
    }
    return withAttachments({ $class: 'java.lang.String', $: s.toUpperCase() }, attachments);
  },
  // How deep a value is nested: a value is 1 level, each map or list around it one more.
  async depth(v) {
    const depth = x => (x && typeof x === 'object'
      ? 1 + Math.max(0, ...Object.values(x).map(depth)) : 1);
    return { $class: 'int', $: depth(v) };
  },
  // A thrown error: sofa-rpc-node answers status 80 with its message.
  async fail(msg) {
    throw new Error(msg);
  },
  // A returned exception object: dubbo-remoting writes it with flag 0 (an exception).
  async reject(msg) {
    return { $class: 'com.example.ShapeException', $: { detailMessage: msg } };
  },
  // An exception with a cause that has a cause: the mesh names each in its 502 body.
  async rejectWithCause(msg) {
    const root = { $class: 'java.net.ConnectException', $: { detailMessage: 'refused' } };
    const io = { $class: 'java.io.IOException', $: { detailMessage: 'disk gone', cause: root } };
    return { $class: 'com.example.ShapeException', $: { detailMessage: msg, cause: io } };
  },
};
for (const name of Object.keys(shapes)) {
  const body = shapes[name];
  shapes[name] = async function counted(...args) {
    shapeCalls++;
    return body.apply(this, args);
  };
}
server.addService({ interfaceName: 'com.example.ShapeService', version: '0.0.0' }, shapes);

// com.example.Greeter in two versions on one port, for one provider-agent fronting both
// (agent-consumer/tests/mesh_sofa_peer.rs). sofa-rpc-node routes by interface and
// version only; the group the mesh sends is echoed from the request's attachments.
for (const version of ['1.0.0', '2.0.0']) {
  server.addService({ interfaceName: 'com.example.Greeter', version }, {
    async greet(name) {
      const group = this.req.data.requestProps.group || '';
      return `${version}/${group}: hello ${name}`;
    },
  });
}

if (!registry) {
  server.start().then(() => {
    console.log(`listening ${port}`);
  });
} else {
  const timer = setTimeout(() => {
    console.error(`provider.js: not registered in ZooKeeper ${zkAddress} within 30s`);
    process.exit(1);
  }, 30000);
  (async () => {
    await registry.ready();
    await server.start();
    await server.publish(); // resolves once a node with its URL is seen through a watch
    await allNodesExist(); // ...so check each service's own node, read back
    clearTimeout(timer);
    console.log(`listening ${port} registered ${zkAddress}`);
  })().catch(err => {
    console.error('provider.js: registration failed:', err && err.stack || err);
    process.exit(1);
  });
  // Waits until the node of every service (as sofa named it) exists in ZooKeeper, read
  // through a session of our own (only reading).
  async function allNodesExist() {
    const zookeeper = require('node-zookeeper-client'); // sofa's own ZooKeeper client
    const slash = zkAddress.indexOf('/');
    const root = zkAddress.slice(slash).replace(/\/?$/, '/');
    const paths = Array.from(server.services.values(),
      service => `${root}${service.interfaceName}/providers/${encodeURIComponent(service.publishUrl)}`);
    const zk = zookeeper.createClient(zkAddress.slice(0, slash));
    const connected = new Promise(resolve => zk.once('connected', resolve));
    zk.connect();
    await connected;
    const exists = path => new Promise((resolve, reject) => {
      zk.exists(path, (err, stat) => (err ? reject(err) : resolve(!!stat)));
    });
    try {
      for (const path of paths) {
        while (!await exists(path)) await new Promise(resolve => setTimeout(resolve, 20));
      }
    } finally {
      zk.close();
    }
  }
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 5000).unref();
    server.unPublish()
      .then(() => registry.close())
      .catch(err => console.error('provider.js: unregister failed:', err && err.message))
      .then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
