/**
 * RGB pictures (the kernel's `input`, `examples` and `pictures` replies) onto canvases: one conversion
 * to RGBA, and one nearest-neighbour upscale for thumbnails.
 *
 * @example
 *   const scale = drawUpscaled(canvas, crop, 168); // crop drawn ×scale, pixelated
 */
import type { InputPicture } from "./protocol";

/**
 * An RGB picture as opaque RGBA `ImageData`.
 *
 * @example
 *   ctx.putImageData(rgbaImage(input), 0, 0);
 */
export function rgbaImage({ width, height, pixels }: InputPicture): ImageData {
  const image = new ImageData(width, height);
  for (let i = 0, n = width * height; i < n; i++) {
    image.data[4 * i] = pixels[3 * i];
    image.data[4 * i + 1] = pixels[3 * i + 1];
    image.data[4 * i + 2] = pixels[3 * i + 2];
    image.data[4 * i + 3] = 255;
  }
  return image;
}

/**
 * Draws `picture` into `canvas` upscaled by the smallest whole factor that reaches `minPixels` on its
 * longer side, without smoothing (each pixel stays a block); returns the factor, 0 when nothing was drawn.
 *
 * @example
 *   const scale = drawUpscaled(canvas, picture, 96);
 */
export function drawUpscaled(canvas: HTMLCanvasElement, picture: InputPicture, minPixels: number): number {
  const { width, height } = picture;
  if (width === 0 || height === 0) return 0;
  const scale = Math.max(1, Math.ceil(minPixels / Math.max(width, height)));
  canvas.width = width * scale;
  canvas.height = height * scale;
  const g = canvas.getContext("2d");
  if (g === null) return 0;
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  small.getContext("2d")?.putImageData(rgbaImage(picture), 0, 0);
  g.imageSmoothingEnabled = false;
  g.drawImage(small, 0, 0, canvas.width, canvas.height);
  return scale;
}
