/**
 * The frame bar of a video model: a slider over the input clip's frames (the `frame` and `frames` traits),
 * a play button, and a label saying which frame of the shown layer that is (a layer with a temporal stride
 * has fewer frames, each covering several input frames). Every frame is a new run of the model in the
 * kernel, so the slider asks for the frame it is let go on, and play moves on once the kernel has shown
 * the frame before. Hidden for image models.
 *
 * @example
 *   const bar = createFrameBar(container, (frame) => store.set({ frame }));
 *   bar.update({ frames: 16, frame: 5, layerFrames: 4, layerFrame: 1, live: true, revision: 3, drawn: true });
 */
import { el, rangeInput } from "../dom";

export interface FrameState {
  /** Frames of the input clip; 0 for a model without video layers. */
  frames: number;
  /** The input frame shown (from 0, as `w.frame`). */
  frame: number;
  /** The shown layer's own frames (T) and the one of them shown; 0 and 0 for an image layer. */
  layerFrames: number;
  layerFrame: number;
  /** Whether a kernel answers (a saved HTML file holds one frame). */
  live: boolean;
  /** The kernel's capture count: a new one after a frame was asked for means the re-run is done. */
  revision: number;
  /** Whether the grid has drawn the shown layer. */
  drawn: boolean;
}

export interface FrameBar {
  readonly element: HTMLElement;
  update(state: FrameState): void;
  destroy(): void;
}

/**
 * The words for the shown frame; the layer's own frame when it has fewer than the clip.
 *
 * @example
 *   frameText(5, 16, 1, 4); // "frame 5 of 16 · layer frame 1 of 4"
 *   frameText(5, 16, 5, 16); // "frame 5 of 16"
 */
export function frameText(frame: number, frames: number, layerFrame: number, layerFrames: number): string {
  const clip = `frame ${frame} of ${frames}`;
  if (layerFrames === 0 || layerFrames === frames) return clip;
  return `${clip} · layer frame ${layerFrame} of ${layerFrames}`;
}

/** Play never asks faster than this: a tiny clip re-runs in a few milliseconds. */
const PLAY_INTERVAL_MS = 150;

export function createFrameBar(container: HTMLElement, onFrame: (frame: number) => void): FrameBar {
  const element = el("div", "fm-frame-row");
  element.hidden = true;
  const name = el("span", "fm-field-label", "Frame");
  const play = el("button", "fm-button fm-frame-play", "▶");
  play.type = "button";
  play.setAttribute("aria-label", "Play the clip");
  const slider = rangeInput("Video frame");
  const label = el("output", "fm-frame-label");
  label.title =
    "The input frame every layer shows, numbered from 0 (w.frame). A layer with fewer frames (a temporal stride) shows the one covering it.";
  element.append(name, play, slider, label);
  container.append(element);
  let state: FrameState = { frames: 0, frame: 0, layerFrames: 0, layerFrame: 0, live: true, revision: 0, drawn: true };
  let playing = false;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let asked = -1;
  let askedAt = -1;

  const show = (frame: number): void => {
    const text = frameText(frame, state.frames, state.layerFrame, state.layerFrames);
    label.textContent = text;
    slider.setAttribute("aria-valuetext", text);
  };
  const ask = (frame: number): void => {
    asked = frame;
    askedAt = state.revision;
    onFrame(frame);
  };
  const setPlaying = (on: boolean): void => {
    playing = on;
    play.textContent = on ? "❚❚" : "▶";
    play.setAttribute("aria-label", on ? "Pause" : "Play the clip");
    play.setAttribute("aria-pressed", String(on));
    if (!on && timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  };
  // The next frame once the kernel shows the one asked for (never a backlog of re-runs).
  const advance = (): void => {
    const done = state.revision !== askedAt && state.frame === asked && state.drawn;
    if (!playing || timer !== null || !done) return;
    timer = setTimeout(() => {
      timer = null;
      if (playing) ask((state.frame + 1) % state.frames);
    }, PLAY_INTERVAL_MS);
  };
  const onPlay = (): void => {
    setPlaying(!playing);
    if (playing) ask((state.frame + 1) % state.frames);
  };
  const onInput = (): void => show(slider.valueAsNumber);
  const onChange = (): void => {
    setPlaying(false);
    ask(slider.valueAsNumber);
  };
  play.addEventListener("click", onPlay);
  slider.addEventListener("input", onInput);
  slider.addEventListener("change", onChange);

  return {
    element,
    update(next) {
      state = next;
      element.hidden = next.frames <= 1;
      slider.max = String(Math.max(0, next.frames - 1));
      slider.disabled = play.disabled = !next.live;
      const why = next.live ? "" : "Showing another frame needs the live kernel";
      slider.title = play.title = why;
      if (!next.live || next.frames <= 1) setPlaying(false);
      if (slider.valueAsNumber !== next.frame) slider.value = String(next.frame);
      show(next.frame);
      advance();
    },
    destroy() {
      setPlaying(false);
      play.removeEventListener("click", onPlay);
      slider.removeEventListener("input", onInput);
      slider.removeEventListener("change", onChange);
      element.remove();
    },
  };
}
