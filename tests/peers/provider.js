'use strict';
// A real Dubbo provider written by someone else (sofa-rpc-node + dubbo-remoting, hessian2),
// used by dubbo-mesh's tests. Usage: node provider.js <port>
// Prints "listening <port>" once it accepts connections.

const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const Response = require('dubbo-remoting/lib/protocol/response');

// dubbo-remoting 2.1.4 drops the result flag when the value is falsy (0, false, '', null):
// Java writes `91 90` for 0 where it writes `90`. Mend it as Java does: a flag first.
const { getSerializationByName } = require('dubbo-remoting/lib/serialize');
const originalEncode = Response.prototype.encode;
Response.prototype.encode = function encode(options = {}) {
  if (this.isHeartbeat || this.status !== Response.OK || this.data) {
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
  if (this.data === null || this.data === undefined) {
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

const port = Number(process.argv[2] || 20880);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };
const server = new RpcServer({ logger, port, protocol, version: '0.0.0' });

server.addService({
  interfaceName: 'com.alibaba.dubbo.performance.demo.provider.IHelloService',
  version: '0.0.0',
}, {
  async hash(s) {
    return { $class: 'int', $: javaHashCode(String(s)) };
  },
});

server.start().then(() => {
  console.log(`listening ${port}`);
});
