/**
 * The step bar: a slider over the widget's training steps (checkpoints and recorded snapshots) with a last
 * position for the model as it is now, and a label saying which one the view shows. Moving it asks the
 * kernel to show that step (the grid, channel view, Grad-CAM and predictions follow); while a training loop
 * refreshes the view live it names the step the kernel pushed. Hidden when the widget has no steps.
 *
 * @example
 *   const bar = createStepBar(container, (step) => store.set({ step }));
 *   bar.update({ steps: [{ label: "0", kind: "checkpoint" }], step: 0, nowLabel: "", live: true });
 */
import { el, rangeInput } from "../dom";
import type { StepInfo } from "../protocol";

export interface StepState {
  steps: readonly StepInfo[];
  /** The shown step's index, or null for the model as it is now. */
  step: number | null;
  /** What "now" is called ("step 1200" after a live refresh); "" when nothing refreshed the view. */
  nowLabel: string;
  /** Whether a kernel answers (a saved HTML file cannot re-run the model at another step). */
  live: boolean;
}

export interface StepBar {
  readonly element: HTMLElement;
  update(state: StepState): void;
  destroy(): void;
}

/**
 * The words for a slider position: `index` of `steps`, or `steps.length` for now.
 *
 * @example
 *   stepText([{ label: "500", kind: "checkpoint" }], 0, ""); // "checkpoint 500"
 *   stepText([], 0, "step 1200");                            // "step 1200 (live)"
 */
export function stepText(steps: readonly StepInfo[], index: number, nowLabel: string): string {
  const entry = steps[index];
  if (entry === undefined) return nowLabel === "" ? "now" : `${nowLabel} (live)`;
  return entry.kind === "checkpoint" ? `checkpoint ${entry.label}` : `step ${entry.label}`;
}

export function createStepBar(container: HTMLElement, onStep: (step: number | null) => void): StepBar {
  const element = el("div", "fm-step-row");
  element.hidden = true;
  const name = el("span", "fm-field-label", "Step");
  const slider = rangeInput("Training step");
  const label = el("output", "fm-step-label");
  label.title = "The weights the view shows: a checkpoint, a recorded step, or the model as it is now";
  element.append(name, slider, label);
  container.append(element);
  let state: StepState = { steps: [], step: null, nowLabel: "", live: true };

  const show = (index: number): void => {
    const text = stepText(state.steps, index, state.nowLabel);
    label.textContent = state.steps.length > 0 ? `${text} · ${index + 1} / ${state.steps.length + 1}` : text;
    slider.setAttribute("aria-valuetext", text);
  };
  // Every step re-runs the model: the label follows the drag, the kernel hears of the step let go on.
  const onInput = (): void => show(slider.valueAsNumber);
  const onChange = (): void => {
    const index = slider.valueAsNumber;
    onStep(index >= state.steps.length ? null : index);
  };
  slider.addEventListener("input", onInput);
  slider.addEventListener("change", onChange);

  return {
    element,
    update(next) {
      state = next;
      const n = next.steps.length;
      element.hidden = n === 0 && next.nowLabel === "";
      slider.max = String(n);
      slider.disabled = n === 0 || !next.live;
      slider.title = next.live ? "" : "Showing another step needs the live kernel";
      const index = next.step === null || next.step >= n ? n : next.step;
      if (slider.valueAsNumber !== index) slider.value = String(index);
      show(index);
    },
    destroy() {
      slider.removeEventListener("input", onInput);
      slider.removeEventListener("change", onChange);
      element.remove();
    },
  };
}
