import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { Socket } from "node:net";

/** Linux's O_PATH (Node has no constant for it): a handle on the file itself, for fstat only. */
const O_PATH = 0o10000000;

/**
 * Connects to the Unix socket at `path` itself, never to another one a link there points to: for
 * sockets in a directory an unprivileged program may change (a VM's QEMU makes its sockets).
 * connect(2) follows links, so the socket file is opened without following one, checked, and
 * reached through its /proc/self/fd entry. Failures come as the socket's "error" event.
 */
export function connectSocketFile(path: string): Socket {
  const socket = new Socket();
  let fd: number | undefined;
  try {
    fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
    if (!fstatSync(fd).isSocket()) {
      throw Object.assign(new Error(`${path} is not a socket`), { code: "ENOTSOCK" });
    }
  } catch (error) {
    if (fd !== undefined) closeSync(fd);
    process.nextTick(() => socket.destroy(error as Error));
    return socket;
  }
  const handle = fd;
  let open = true;
  const release = () => {
    if (open) closeSync(handle);
    open = false;
  };
  socket.once("connect", release);
  socket.once("close", release);
  return socket.connect(`/proc/self/fd/${handle}`);
}
