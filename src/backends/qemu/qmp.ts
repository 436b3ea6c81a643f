import type { Socket } from "node:net";
import { ShoalError } from "../../errors.js";
import { connectSocketFile } from "../../host/unix-socket.js";

/**
 * A client for QEMU's machine protocol (QMP) on a VM's Unix socket: JSON lines, a greeting, then
 * commands answered by "return" or "error" with the id they were sent with; events come in between
 * and are skipped.
 */
export class QmpClient {
  private buffer = "";
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void }
  >();
  private greeted: (() => void) | undefined;

  private constructor(
    private readonly socket: Socket,
    private readonly path: string,
  ) {
    socket.on("data", (chunk: Buffer) => this.receive(chunk.toString()));
    socket.on("close", () => this.failAll(new ShoalError(`QMP connection ${path} closed`)));
  }

  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = connectSocketFile(path);
    const client = new QmpClient(socket, path);
    let timer: NodeJS.Timeout | undefined;
    try {
      // A QEMU that is exiting may close the socket before its greeting: that ends the wait too.
      await new Promise<void>((resolve, reject) => {
        const fail = (why: string) => {
          socket.destroy();
          reject(new ShoalError(`cannot talk to QEMU on ${path}: ${why}`));
        };
        client.greeted = resolve;
        timer = setTimeout(() => fail(`no greeting within ${timeoutMs} ms`), timeoutMs);
        socket.once("error", (error) => fail(error.message));
        socket.once("close", () => fail("it closed the connection"));
      });
    } finally {
      clearTimeout(timer);
    }
    await client.execute("qmp_capabilities");
    return client;
  }

  private receive(text: string): void {
    this.buffer += text;
    for (let end = this.buffer.indexOf("\n"); end >= 0; end = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, end).trim();
      this.buffer = this.buffer.slice(end + 1);
      if (line) this.handle(JSON.parse(line) as Record<string, unknown>);
    }
  }

  private handle(message: Record<string, unknown>): void {
    if ("QMP" in message) {
      this.greeted?.();
      return;
    }
    const pending = typeof message.id === "number" ? this.waiting.get(message.id) : undefined;
    if (!pending || typeof message.id !== "number") return;
    this.waiting.delete(message.id);
    if ("error" in message) {
      const error = message.error as { desc?: string };
      pending.reject(
        new ShoalError(`QEMU refused a command on ${this.path}: ${error.desc ?? "unknown error"}`),
      );
    } else {
      pending.resolve(message.return);
    }
  }

  private failAll(error: Error): void {
    for (const pending of this.waiting.values()) pending.reject(error);
    this.waiting.clear();
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`,
      );
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
