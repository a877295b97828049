import type { MessageModel } from "../protocol";

type Handler = (msg: unknown, buffers: DataView[]) => void;

/** The message side of an anywidget model, for tests: records what the view sends, delivers replies. */
export class FakeComm implements MessageModel {
  sent: Record<string, unknown>[] = [];
  handlers: Handler[] = [];
  send(content: unknown): void {
    this.sent.push(content as Record<string, unknown>);
  }
  on(_event: "msg:custom", cb: Handler): void {
    this.handlers.push(cb);
  }
  off(_event: "msg:custom", cb: Handler): void {
    this.handlers = this.handlers.filter((h) => h !== cb);
  }
  /** Delivers `msg` to every listener, as the kernel's reply would arrive. */
  deliver(msg: unknown, buffers: DataView[] = []): void {
    for (const h of this.handlers) h(msg, buffers);
  }
}
