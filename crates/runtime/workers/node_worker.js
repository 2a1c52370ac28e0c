// Verge node worker: requires the handler once, then serves invocations one at a time.
//
// Protocol (see crates/runtime/src/frame.rs): one unix socket (VERGE_SOCK) carries
// both directions; frames are a 4-byte big-endian length + payload.
//   request:  "J" + JSON text          | "B" + u16 ctlen + content type + raw bytes
//   response: kind + u32 loglen + logs + rest, kind in
//             R (ready), L (load error: rest = message), J (JSON output),
//             B (bytes output: u16 ctlen + content type + data),
//             E (handler error: rest = JSON {type, message, traceback})
// The real stdout/stderr (fd 1/2) are only drained and logged by the runtime.
'use strict';
const net = require('net');
const path = require('path');
const util = require('util');

const env = process.env;
const sockPath = env.VERGE_SOCK;
const codeDir = env.VERGE_DIR;
const spec = env.VERGE_HANDLER || '';
const maxLog = parseInt(env.VERGE_MAX_LOG || '65536', 10);
for (const k of ['VERGE_SOCK', 'VERGE_DIR', 'VERGE_HANDLER', 'VERGE_MAX_LOG', 'VERGE_MEMORY']) delete env[k];
const MAX_FRAME = 16 * 1024 * 1024;

// --- capped capture of console.* and process.stdout/stderr.write ---
let logParts = [];
let logSize = 0;
let logDropped = 0;

function capture(chunk, encoding) {
  if (logSize >= maxLog) {
    logDropped += typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding || 'utf8') : chunk.length;
    return;
  }
  let b;
  if (typeof chunk === 'string') b = Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8');
  else if (Buffer.isBuffer(chunk)) b = chunk;
  else if (chunk instanceof Uint8Array) b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  else b = Buffer.from(String(chunk));
  const room = maxLog - logSize;
  if (b.length <= room) {
    logParts.push(Buffer.from(b));
    logSize += b.length;
  } else {
    logParts.push(Buffer.from(b.subarray(0, room)));
    logSize = maxLog;
    logDropped += b.length - room;
  }
}

function takeLogs() {
  let out = logParts.length === 1 ? logParts[0] : Buffer.concat(logParts);
  if (logDropped > 0) out = Buffer.concat([out, Buffer.from(`\n[... ${logDropped} bytes dropped]`)]);
  logParts = [];
  logSize = 0;
  logDropped = 0;
  return out;
}

function write(chunk, encoding, cb) {
  if (typeof encoding === 'function') {
    cb = encoding;
    encoding = undefined;
  }
  capture(chunk, encoding);
  if (typeof cb === 'function') process.nextTick(cb);
  return true;
}
process.stdout.write = write;
process.stderr.write = write;
const logLine = (...args) => {
  capture(util.format(...args) + '\n');
};
console.log = logLine;
console.info = logLine;
console.debug = logLine;
console.warn = logLine;
console.error = logLine;

// --- framing ---
const EMPTY = Buffer.alloc(0);
let sock;

function send(kind, logs, rest) {
  let len = 1 + 4 + logs.length + rest.length;
  if (len > MAX_FRAME) {
    rest = Buffer.from(
      JSON.stringify({
        type: 'OutputTooLarge',
        message: `response of ${len} bytes exceeds the ${MAX_FRAME} byte frame limit`,
        traceback: '',
      }),
    );
    kind = 'E';
    logs = logs.subarray(0, maxLog);
    len = 1 + 4 + logs.length + rest.length;
  }
  const head = Buffer.allocUnsafe(9);
  head.writeUInt32BE(len, 0);
  head.write(kind, 4, 'latin1');
  head.writeUInt32BE(logs.length, 5);
  sock.write(rest.length + logs.length < 16384 ? Buffer.concat([head, logs, rest]) : head);
  if (rest.length + logs.length >= 16384) {
    sock.write(logs);
    sock.write(rest);
  }
}

function errorFrame(e) {
  let type = 'Error';
  let message = '';
  let traceback = '';
  if (e instanceof Error) {
    type = e.name || (e.constructor && e.constructor.name) || 'Error';
    message = String(e.message);
    traceback = String(e.stack || '');
  } else {
    message = typeof e === 'string' ? e : util.inspect(e);
  }
  return Buffer.from(JSON.stringify({ type, message, traceback }));
}

// --- load the handler (or, with --check, only compile its module) ---
const checkOnly = process.argv.includes('--check');
let fn = null;
let loadError = null;
try {
  const dot = spec.lastIndexOf('.');
  if (dot <= 0) throw new Error(`handler ${JSON.stringify(spec)} must be module.function`);
  const modPath = path.join(codeDir, spec.slice(0, dot));
  if (checkOnly) {
    // The cloud's deploy-time check of code that runs elsewhere: nothing of it runs.
    const fs = require('fs');
    const file = [modPath, modPath + '.js', path.join(modPath, 'index.js')].find((f) => {
      try { return fs.statSync(f).isFile(); } catch (_) { return false; }
    });
    if (!file) throw new Error(`Cannot find module '${spec.slice(0, dot)}'`);
    const source = fs.readFileSync(file, 'utf8');
    new (require('vm').Script)(require('module').wrap(source), { filename: file });
    const name = spec.slice(dot + 1).replace(/[$]/g, '\\$');
    const exported = new RegExp(`\\bexports\\s*(\\.\\s*${name}\\b|\\[\\s*['"\`]${name}['"\`]\\s*\\])|\\bmodule\\.exports\\b`);
    if (!exported.test(source)) {
      throw new TypeError(`handler ${JSON.stringify(spec)} is not exported (no exports.${spec.slice(dot + 1)} or module.exports in ${path.basename(file)})`);
    }
  } else {
    const mod = require(modPath);
    const name = spec.slice(dot + 1);
    fn = mod[name];
    if (typeof fn !== 'function') {
      throw new TypeError(`handler ${JSON.stringify(spec)} is not a function (exports.${name} is ${typeof fn})`);
    }
  }
} catch (e) {
  loadError = e instanceof Error ? String(e.stack || e) : String(e);
}

sock = net.createConnection(sockPath);
sock.setNoDelay && sock.setNoDelay(true);
sock.on('error', () => process.exit(1));
sock.on('close', () => process.exit(0));
sock.on('connect', () => {
  if (loadError !== null) {
    const logs = takeLogs();
    const head = Buffer.allocUnsafe(9);
    const rest = Buffer.from(loadError);
    head.writeUInt32BE(1 + 4 + logs.length + rest.length, 0);
    head.write('L', 4, 'latin1');
    head.writeUInt32BE(logs.length, 5);
    sock.end(Buffer.concat([head, logs, rest]), () => process.exit(1));
    return;
  }
  // In check mode too the worker stays until the runtime hangs up (it kills the
  // checker once it read the answer): exiting first would race the runtime's accept.
  send('R', takeLogs(), EMPTY);
});

let buf = EMPTY;
const frames = [];
let busy = false;

sock.on('data', (chunk) => {
  buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
  while (buf.length >= 4) {
    const n = buf.readUInt32BE(0);
    if (n === 0 || n > MAX_FRAME) {
      process.exit(3);
    }
    if (buf.length < 4 + n) break;
    frames.push(buf.subarray(4, 4 + n));
    buf = buf.subarray(4 + n);
  }
  if (!busy) pump();
});

async function pump() {
  busy = true;
  while (frames.length > 0) {
    await handle(frames.shift());
  }
  busy = false;
}

async function handle(frame) {
  let kind;
  let rest;
  try {
    let event;
    if (frame[0] === 0x4a) {
      event = JSON.parse(frame.toString('utf8', 1));
    } else {
      const ctlen = frame.readUInt16BE(1);
      event = frame.subarray(3 + ctlen);
    }
    let r = fn(event);
    if (r !== null && typeof r === 'object' && typeof r.then === 'function') r = await r;
    if (r instanceof Uint8Array) {
      const ct = Buffer.from('application/octet-stream');
      const h = Buffer.allocUnsafe(2);
      h.writeUInt16BE(ct.length, 0);
      kind = 'B';
      rest = Buffer.concat([h, ct, Buffer.from(r.buffer, r.byteOffset, r.byteLength)]);
    } else {
      const s = r === undefined ? 'null' : JSON.stringify(r);
      kind = 'J';
      rest = Buffer.from(s === undefined ? 'null' : s);
    }
  } catch (e) {
    kind = 'E';
    rest = errorFrame(e);
  }
  send(kind, takeLogs(), rest);
}
