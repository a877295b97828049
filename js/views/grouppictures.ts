/**
 * The dataset bar's group rows (a group audit, `scan_pair`): for each of the two labels compared, its
 * image count and small pictures of its example images (`meta.scan.examples` of the layer reply, up to 8
 * per label), fetched in one `pictures` request. Clicking a picture makes that image the widget's input.
 * Loading, error and "making it the input" states are shown in the rows, never a blank box; a new pair
 * drops the replies of the old one. Labels are text: only `textContent` touches them.
 *
 * @example
 *   const rows = createGroupPictures(bar, { source, revision: () => store.get("revision") });
 *   rows.show({ info, pair: ["cat", "dog"], counts: scan.counts, examples: scan.examples });
 *   rows.show(null); // hides
 */
import { el } from "../dom";
import { drawUpscaled } from "../pictures";
import { type DatasetPicture, isDropped, type ScanInfo } from "../protocol";
import type { DataSource } from "../source";

/** A thumbnail's size on screen (CSS px): pictures are upscaled, pixelated, to this box. */
export const GROUP_THUMB_PX = 44;
/** Pictures per label asked for (the kernel sends up to 8; a request holds at most 16). */
export const PICTURES_PER_GROUP = 8;

export interface GroupPicturesContext {
  source: Pick<DataSource, "pictures" | "useExample" | "live">;
  /** The revision the view knows (a new one ends the "making it the input" state). */
  revision(): number;
}

export interface GroupPicturesState {
  /** The `scan_info` trait (a new object: a new scan). */
  info: ScanInfo;
  /** The two labels compared. */
  pair: readonly string[];
  /** Images of each label (`meta.scan.counts`). */
  counts: Record<string, number>;
  /** Dataset indices of example images of each label (`meta.scan.examples`). */
  examples: Record<string, number[]>;
}

export interface GroupPictures {
  readonly element: HTMLElement;
  /** Shows the rows of a pair (null hides them and drops what is in flight). */
  show(state: GroupPicturesState | null): void;
  destroy(): void;
}

/**
 * The indices to ask for: each label's examples (at most {@link PICTURES_PER_GROUP}), in pair order.
 *
 * @example
 *   pictureIndices(["a", "b"], { a: [3, 9], b: [1] }); // [3, 9, 1]
 */
export function pictureIndices(pair: readonly string[], examples: Record<string, number[]>): number[] {
  return pair.flatMap((label) => (examples[label] ?? []).slice(0, PICTURES_PER_GROUP));
}

/** Side of a thumbnail's canvas in device pixels at the least (CSS scales it to fit). */
const THUMB_PIXELS = 96;

/**
 * Builds the rows inside `container` (hidden until a pair is shown).
 *
 * @example
 *   const rows = createGroupPictures(bar.element, ctx);
 */
export function createGroupPictures(container: HTMLElement, ctx: GroupPicturesContext): GroupPictures {
  const element = el("div", "fm-scan-groups");
  element.setAttribute("aria-label", "Dataset group examples");
  element.hidden = true;
  const rowsBox = el("div", "fm-scan-group-rows");
  const message = el("div", "fm-scan-groups-message");
  message.setAttribute("role", "status");
  message.hidden = true;
  element.append(rowsBox, message);
  container.append(element);

  /** The rows drawn (pair, counts, indices) and the pictures asked for, under the scan they belong to. */
  let rowsKey = "";
  /** The indices (as JSON) of the rows shown; the request in flight for them; the last one settled. */
  let picturesKey = "";
  let wanted = "";
  let settled = "";
  let scanRef: ScanInfo | null = null;
  /** The pictures of the last reply, by dataset index, and the request they answer. */
  let got: { key: string; byIndex: Map<number, DatasetPicture> } | null = null;
  /** The thumbnail slots of the rows drawn: one per index asked for. */
  let slots: { index: number; label: string; slot: HTMLElement }[] = [];
  /** What the message says when no click is pending. */
  let note = { text: "", error: false };
  /** A click is making an image the input: its index and the revision it was sent under. */
  let using: { index: number; revision: number } | null = null;

  function setMessage(text: string, isError = false): void {
    message.textContent = text;
    message.hidden = text === "";
    message.classList.toggle("fm-error-text", isError);
  }

  function setNote(text: string, error = false): void {
    note = { text, error };
    if (using === null) setMessage(text, error);
  }

  function setState(state: "loading" | "ready" | "error" | "busy"): void {
    element.dataset.state = state;
    element.setAttribute("aria-busy", String(state === "loading" || state === "busy"));
    rowsBox.classList.toggle("fm-stale", state === "loading" || state === "busy");
  }

  /** The state once nothing is pending: error, loading or ready. */
  function restingState(): "loading" | "ready" | "error" {
    if (note.error) return "error";
    return wanted !== "" ? "loading" : "ready";
  }

  function use(index: number): void {
    if (using !== null) return;
    using = { index, revision: ctx.revision() };
    setState("busy");
    setMessage(`Making dataset image #${index} the input…`);
    ctx.source.useExample(index).then(
      () => finishUsing(),
      (err: unknown) => {
        if (isDropped(err)) return finishUsing();
        using = null;
        setState(restingState());
        setMessage(`Could not show image #${index}: ${(err as Error).message}`, true);
      },
    );
  }

  /** The kernel re-ran on the image (a new revision): the rows are usable again. */
  function finishUsing(): void {
    if (using === null || ctx.revision() === using.revision) return;
    using = null;
    setMessage(note.text, note.error);
    setState(restingState());
  }

  function thumbnail(p: DatasetPicture, label: string): HTMLButtonElement {
    const button = el("button", "fm-scan-thumb-button");
    button.type = "button";
    const canvas = el("canvas", "fm-pixelated fm-scan-thumb");
    canvas.style.width = canvas.style.height = `${GROUP_THUMB_PX}px`;
    canvas.style.imageRendering = "pixelated";
    canvas.setAttribute("aria-label", `Dataset image #${p.index}`);
    canvas.title = `#${p.index} · ${p.label ?? label}`;
    drawUpscaled(canvas, p.picture, THUMB_PIXELS);
    button.append(canvas);
    if (ctx.source.live) button.addEventListener("click", () => use(p.index));
    else button.disabled = true;
    return button;
  }

  /** Fills every slot: a thumbnail where its picture came, else a placeholder (`pending`) or nothing. */
  function fill(pending: boolean): void {
    const byIndex = got !== null && got.key === picturesKey ? got.byIndex : null;
    for (const { index, label, slot } of slots) {
      const p = byIndex?.get(index);
      if (p !== undefined) slot.replaceChildren(thumbnail(p, label));
      else if (pending) {
        const ph = el("span", "fm-scan-thumb-placeholder");
        ph.style.width = ph.style.height = `${GROUP_THUMB_PX}px`;
        ph.title = `#${index} · ${label} (loading)`;
        slot.replaceChildren(ph);
      } else slot.replaceChildren();
      slot.hidden = p === undefined && !pending;
    }
  }

  function fetch(indices: number[], key: string): void {
    wanted = key;
    setState(using === null ? "loading" : "busy");
    setNote(`Loading the pictures of ${indices.length} dataset image${indices.length === 1 ? "" : "s"}…`);
    fill(true);
    ctx.source.pictures(indices).then(
      (pictures) => {
        if (wanted !== key) return;
        wanted = "";
        settled = key;
        got = { key, byIndex: new Map(pictures.map((p) => [p.index, p])) };
        fill(false);
        setNote("");
        if (using === null) setState("ready");
      },
      (e: unknown) => {
        if (wanted !== key) return;
        if (isDropped(e)) {
          // A new capture (an image just clicked) made the reply stale; the pictures do not depend on it.
          if (e.reason === "stale") fetch(indices, key);
          return;
        }
        wanted = "";
        settled = key;
        fill(false);
        setNote(`Could not load the pictures of the groups' images: ${(e as Error).message}`, true);
        if (using === null) setState("error");
      },
    );
  }

  function drawRows(state: GroupPicturesState): void {
    slots = [];
    rowsBox.replaceChildren(
      ...state.pair.map((label) => {
        const row = el("div", "fm-scan-group-row");
        const name = el("span", "fm-scan-group-label", label);
        name.title = label;
        const n = state.counts[label] ?? 0;
        const count = el("span", "fm-groups-counts", `${n.toLocaleString("en-US")} image${n === 1 ? "" : "s"}`);
        const thumbs = el("span", "fm-scan-group-thumbs");
        const indices = (state.examples[label] ?? []).slice(0, PICTURES_PER_GROUP);
        for (const index of indices) {
          const slot = el("span", "fm-scan-thumb-slot");
          slots.push({ index, label, slot });
          thumbs.append(slot);
        }
        if (indices.length === 0) thumbs.append(el("span", "fm-groups-counts", "no images"));
        row.append(name, count, thumbs);
        return row;
      }),
    );
  }

  return {
    element,
    show(state: GroupPicturesState | null): void {
      if (using !== null) finishUsing();
      if (state === null || state.pair.length !== 2) {
        element.hidden = true;
        wanted = "";
        return;
      }
      element.hidden = false;
      if (state.info !== scanRef) {
        scanRef = state.info;
        rowsKey = picturesKey = wanted = settled = "";
        got = null;
      }
      const indices = pictureIndices(state.pair, state.examples);
      const key = JSON.stringify(indices);
      const nextRowsKey = JSON.stringify([state.pair, state.pair.map((l) => state.counts[l] ?? 0), key]);
      if (key !== picturesKey) {
        // Another pair: what is in flight for the old one is dropped on arrival.
        picturesKey = key;
        wanted = settled = "";
      }
      if (nextRowsKey !== rowsKey) {
        rowsKey = nextRowsKey;
        drawRows(state);
        fill(wanted === key);
      }
      if (key === wanted || key === settled) return;
      if (indices.length === 0 || !state.info.crops) {
        settled = key;
        setNote(indices.length === 0 ? "" : "No pictures: pass dataset= to the widget to see its images.");
        if (using === null) setState("ready");
        return;
      }
      fetch(indices, key);
    },
    destroy(): void {
      wanted = "";
      element.remove();
    },
  };
}
