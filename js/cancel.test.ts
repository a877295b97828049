import { describe, expect, it } from "vitest";
import { isCancelled, isDropped, RequestError, Requester } from "./protocol";
import { FakeComm } from "./testing/fake-comm";

/** The kernel's side: answers a request with `extra` merged into an ok reply. */
function answer(model: FakeComm, request: Record<string, unknown>, extra: Record<string, unknown> = {}): void {
  model.deliver({
    type: "reply",
    v: 1,
    id: request.id,
    kind: request.kind,
    ok: true,
    meta: { revision: request.revision },
    arrays: [],
    ...extra,
  });
}

const GRADCAM = { layer: "features.18", sample: 0, target: null, method: "scorecam" };

describe("cancelling the kernel's jobs", () => {
  it("turns a cancelled reply into RequestCancelled, which is not a failure to show", async () => {
    const model = new FakeComm();
    const r = new Requester(model, { revision: () => 1 });
    const job = r.request("gradcam", GRADCAM, { purpose: "gradcam" });
    answer(model, model.sent[0], { ok: false, error: "cancelled", cancelled: true });
    const error = await job.catch((e: unknown) => e);
    expect(isCancelled(error)).toBe(true);
    expect(error).toBeInstanceOf(RequestError);
    expect(isDropped(error)).toBe(false);
    // A plain error reply stays an error.
    const next = r.request("gradcam", GRADCAM, { purpose: "gradcam" });
    answer(model, model.sent[1], { ok: false, error: "not a classifier" });
    const plain = await next.catch((e: unknown) => e);
    expect(isCancelled(plain)).toBe(false);
    expect((plain as Error).message).toBe("not a classifier");
  });

  it("cancels a job at the kernel when a newer request replaces it", async () => {
    const model = new FakeComm();
    const r = new Requester(model, { revision: () => 1 });
    const first = r.request("gradcam", GRADCAM, { purpose: "gradcam" }).catch((e: unknown) => e);
    const second = r.request("gradcam", { ...GRADCAM, layer: "features.17" }, { purpose: "gradcam" });
    expect(isDropped(await first)).toBe(true);
    const kinds = model.sent.map((m) => m.kind);
    expect(kinds).toEqual(["gradcam", "cancel"]);
    expect(model.sent[1]).toMatchObject({ type: "request", kind: "cancel", task: model.sent[0].id });
    answer(model, model.sent[1], { meta: { revision: 1, task: model.sent[0].id, cancelled: true } });
    // The replaced job's (cancelled) reply frees the slot: the newer request goes out.
    answer(model, model.sent[0], { ok: false, error: "cancelled", cancelled: true });
    expect(model.sent[2]).toMatchObject({ kind: "gradcam", layer: "features.17" });
    answer(model, model.sent[2], {
      meta: { revision: 1, layer: "features.17", sample: 0, shape: [1, 1], method: "scorecam", normalized: true },
      arrays: [],
    });
    await second.catch(() => {});
  });

  it("sends no cancel when a replaced request is not a job", () => {
    const model = new FakeComm();
    const r = new Requester(model, { revision: () => 1 });
    r.request("layer", { layer: "a", sample: 0 }, { purpose: "layer" }).catch(() => {});
    r.request("layer", { layer: "b", sample: 0 }, { purpose: "layer" }).catch(() => {});
    expect(model.sent.map((m) => m.kind)).toEqual(["layer"]);
  });

  it("cancels a job that is aborted while at the kernel", async () => {
    const model = new FakeComm();
    const r = new Requester(model, { revision: () => 1 });
    const abort = new AbortController();
    const job = r
      .request("ablate", { layer: "conv1", channels: [3] }, { signal: abort.signal })
      .catch((e: unknown) => e);
    abort.abort();
    expect(isDropped(await job)).toBe(true);
    expect(model.sent.map((m) => [m.kind, m.task])).toEqual([
      ["ablate", undefined],
      ["cancel", model.sent[0].id],
    ]);
  });
});
