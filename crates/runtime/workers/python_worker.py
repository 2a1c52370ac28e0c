# Verge python3 worker: imports the handler once, then serves invocations.
#
# Protocol (see crates/runtime/src/frame.rs): one unix socket (VERGE_SOCK) carries
# both directions; frames are a 4-byte big-endian length + payload.
#   request:  b"J" + JSON text          | b"B" + u16 ctlen + content type + raw bytes
#   response: kind + u32 loglen + logs + rest, kind in
#             R (ready), L (load error: rest = message), J (JSON output),
#             B (bytes output: u16 ctlen + content type + data),
#             E (handler error: rest = JSON {type, message, traceback})
# The real stdout/stderr (fd 1/2) are only drained and logged by the runtime.
import os
import sys


def _run():
    import importlib
    import json
    import socket
    import struct
    import traceback

    env = os.environ
    sock_path = env.pop("VERGE_SOCK")
    code_dir = env.pop("VERGE_DIR")
    spec = env.pop("VERGE_HANDLER")
    memory = env.pop("VERGE_MEMORY", "")
    max_log = int(env.pop("VERGE_MAX_LOG", "65536"))
    max_frame = 16 * 1024 * 1024
    check_only = sys.argv[1:2] == ["--check"]

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    rfile = sock.makefile("rb", buffering=65536)
    pack = struct.Struct(">I").pack
    pack2 = struct.Struct(">H").pack

    class _Bin:
        def __init__(self, cap):
            self._cap = cap

        def write(self, data):
            self._cap.add(bytes(data))
            return len(data)

        def flush(self):
            pass

    class Capture:
        """sys.stdout/sys.stderr stand-in: keeps max_log bytes, counts the rest."""

        encoding = "utf-8"
        errors = "replace"

        def __init__(self):
            self.parts = []
            self.size = 0
            self.dropped = 0
            self.buffer = _Bin(self)

        def reset(self):
            self.parts = []
            self.size = 0
            self.dropped = 0

        def add(self, b):
            room = max_log - self.size
            if room <= 0:
                self.dropped += len(b)
            elif len(b) <= room:
                self.parts.append(b)
                self.size += len(b)
            else:
                self.parts.append(b[:room])
                self.size = max_log
                self.dropped += len(b) - room

        def write(self, text):
            if not isinstance(text, str):
                raise TypeError("write() argument must be str, not %s" % type(text).__name__)
            if self.size >= max_log and text.isascii():
                self.dropped += len(text)
            else:
                self.add(text.encode("utf-8", "replace"))
            return len(text)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def flush(self):
            pass

        def isatty(self):
            return False

        def writable(self):
            return True

        def readable(self):
            return False

        def take(self):
            out = b"".join(self.parts)
            if self.dropped:
                out += b"\n[... %d bytes dropped]" % self.dropped
            self.reset()
            return out

    def send(kind, logs, rest):
        payload = kind + pack(len(logs)) + logs + rest
        if len(payload) > max_frame:
            err = json.dumps({
                "type": "OutputTooLarge",
                "message": "response of %d bytes exceeds the %d byte frame limit" % (len(payload), max_frame),
                "traceback": "",
            }).encode()
            logs = logs[: max_log]
            payload = b"E" + pack(len(logs)) + logs + err
        sock.sendall(pack(len(payload)) + payload)

    cap = Capture()
    sys.stdout = cap
    sys.stderr = cap

    if memory:
        import resource

        limit = int(memory)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    script_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != script_dir]
    sys.path.insert(0, code_dir)

    try:
        module_name, _, func_name = spec.rpartition(".")
        if not module_name:
            raise ValueError("handler %r must be module.function" % spec)
        if check_only:
            # Compile the module without running any of it (the cloud's deploy-time
            # check of code that runs elsewhere).
            base = os.path.join(code_dir, *module_name.split("."))
            path = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
            if not os.path.isfile(path):
                raise ModuleNotFoundError("No module named %r" % module_name)
            with open(path, "rb") as f:
                source = f.read()
            import ast

            tree = ast.parse(source, path)
            compile(tree, path, "exec")
            bound = set()
            star = False
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    bound.add(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        for n in ast.walk(t):
                            if isinstance(n, ast.Name):
                                bound.add(n.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    for a in node.names:
                        star = star or a.name == "*"
                        bound.add((a.asname or a.name).split(".")[0])
                else:
                    # Conditional or looped definitions: assume they may bind it.
                    star = True
            if func_name not in bound and not star:
                raise AttributeError(
                    "module %r has no attribute %r (no top-level definition of the handler)"
                    % (module_name, func_name)
                )
            send(b"R", cap.take(), b"")
            # Stay until the runtime hangs up (it kills the checker once it read the
            # answer): exiting first would race the runtime's accept.
            rfile.read(1)
            os._exit(0)
        module = importlib.import_module(module_name)
        fn = getattr(module, func_name)
        if not callable(fn):
            raise TypeError("handler %r is not callable (%s)" % (spec, type(fn).__name__))
    except BaseException as e:
        try:
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            text = last + "\n" + traceback.format_exc()
        except BaseException:
            text = "%s: %s" % (type(e).__name__, e)
        send(b"L", cap.take(), text.encode("utf-8", "replace"))
        sock.close()
        os._exit(1)

    send(b"R", cap.take(), b"")

    read = rfile.read
    loads = json.loads
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    while True:
        header = read(4)
        if len(header) < 4:
            os._exit(0)
        (n,) = struct.unpack(">I", header)
        if n > max_frame or n == 0:
            sys.__stderr__.write("verge worker: bad request frame of %d bytes\n" % n)
            os._exit(3)
        payload = read(n)
        if len(payload) < n:
            os._exit(0)
        kind = payload[0]
        try:
            if kind == 74:  # J
                event = loads(payload[1:])
            else:
                ctlen = (payload[1] << 8) | payload[2]
                event = payload[3 + ctlen:]
            result = fn(event)
            if isinstance(result, (bytes, bytearray, memoryview)):
                ct = b"application/octet-stream"
                rest = pack2(len(ct)) + ct + bytes(result)
                out_kind = b"B"
            else:
                rest = dumps(result).encode()
                out_kind = b"J"
        except BaseException as e:
            try:
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None))
            except BaseException:
                tb = ""
            try:
                msg = str(e)
            except BaseException:
                msg = repr(e)
            out_kind = b"E"
            rest = json.dumps({"type": type(e).__name__, "message": msg, "traceback": tb}).encode()
            del e
        send(out_kind, cap.take(), rest)


_run()
