/**
 * WebGL2 backend: a layer lives on the GPU as one R8UI `TEXTURE_2D_ARRAY` (a channel per array layer,
 * or several channels packed side by side per layer when the device has fewer array layers than
 * channels), the per-channel ranges as a small RGBA32F texture and the colormap as a 256×1 texture. The
 * whole grid is one instanced draw of a quad, one instance per tile; full-resolution maps of a few
 * channels (a zoomed-in downsampled layer) live in a second texture array and are drawn over their tiles
 * by a second instanced draw of the same program.
 *
 * @example
 *   const r = new WebGLRenderer(canvas);          // throws if WebGL2 is unavailable
 *   r.setValues(layer); r.setRanges(ranges); r.setColormap(colormapLUT("gray"), NAN_COLOR);
 *   r.setOrder(order); r.draw(layout, view, devicePixelRatio);
 */
import { type FullResTiles, type LayerValues, type Layout, type Renderer, tilesOf, type View } from "./layout";

/** How channels are placed in the texture array: `slotsX × slotsY` maps per array layer. */
export interface Packing {
  slotsX: number;
  slotsY: number;
  slotsPerLayer: number;
  layers: number;
  texWidth: number;
  texHeight: number;
}

/**
 * Places `channels` maps of `height × width` into as few array layers as needed under the device limits.
 *
 * @example
 *   packChannels(2048, 7, 7, 256, 4096); // 8 maps per layer (4 × 2), 256 layers
 */
export function packChannels(
  channels: number,
  height: number,
  width: number,
  maxLayers: number,
  maxSize: number,
): Packing {
  if (height > maxSize || width > maxSize) {
    throw new Error(
      `grid: a ${height}×${width} feature map exceeds this GPU's texture size limit of ${maxSize}; request the layer downsampled (max_values)`,
    );
  }
  const need = Math.max(1, Math.ceil(channels / maxLayers));
  const fitX = Math.floor(maxSize / width);
  const slotsX = Math.min(fitX, Math.max(1, Math.ceil(Math.sqrt(need))));
  const slotsY = Math.ceil(need / slotsX);
  if (slotsY * height > maxSize) {
    throw new Error(
      `grid: ${channels} channels of ${height}×${width} do not fit this GPU's textures (${maxLayers} layers of ${maxSize}²); request the layer downsampled (max_values)`,
    );
  }
  const slotsPerLayer = slotsX * slotsY;
  return {
    slotsX,
    slotsY,
    slotsPerLayer,
    layers: Math.ceil(channels / slotsPerLayer),
    texWidth: slotsX * width,
    texHeight: slotsY * height,
  };
}

/** Width of the ranges texture; 1024 stays under WebGL2's minimum MAX_TEXTURE_SIZE of 2048. */
const RANGE_TEX_WIDTH = 1024;

const VERTEX = `#version 300 es
layout(location = 0) in vec2 a_corner;
layout(location = 1) in int a_channel;
layout(location = 2) in int a_tile;
uniform int u_columns;
uniform int u_count;
uniform bool u_full;      // drawing full-resolution tiles: the tile comes from a_tile, the map from the instance
uniform vec2 u_cell;
uniform vec2 u_tile;
uniform vec3 u_view;      // k, x, y (CSS px)
uniform float u_dpr;
uniform vec2 u_viewport;  // device px
out vec2 v_uv;
flat out int v_channel;
flat out int v_slot;
void main() {
  int i = u_full ? a_tile : gl_InstanceID;
  if (i < 0 || i >= u_count) {
    gl_Position = vec4(2.0, 2.0, 0.0, 1.0);  // a channel not shown: outside the clip volume
    return;
  }
  vec2 cell = vec2(float(i % u_columns), float(i / u_columns));
  vec2 world = cell * u_cell + a_corner * u_tile;
  vec2 screen = (world * u_view.x + u_view.yz) * u_dpr;
  vec2 clip = screen / u_viewport * 2.0 - 1.0;
  gl_Position = vec4(clip.x, -clip.y, 0.0, 1.0);
  v_uv = a_corner;
  v_channel = a_channel;
  v_slot = u_full ? gl_InstanceID : a_channel;
}`;

const FRAGMENT = `#version 300 es
precision highp float;
precision highp int;
uniform highp usampler2DArray u_values;
uniform highp sampler2D u_ranges;
uniform highp sampler2D u_lut;
uniform ivec2 u_mapSize;
uniform int u_slotsX;
uniform int u_slotsPerLayer;
uniform vec4 u_nan;
in vec2 v_uv;
flat in int v_channel;
flat in int v_slot;
out vec4 o_color;
void main() {
  ivec2 px = clamp(ivec2(floor(v_uv * vec2(u_mapSize))), ivec2(0), u_mapSize - 1);
  int layer = v_slot / u_slotsPerLayer;
  int slot = v_slot - layer * u_slotsPerLayer;
  ivec2 offset = ivec2(slot % u_slotsX, slot / u_slotsX) * u_mapSize;
  uint q = texelFetch(u_values, ivec3(offset + px, layer), 0).r;
  if (q == 255u) {
    o_color = u_nan;
    return;
  }
  vec4 r = texelFetch(u_ranges, ivec2(v_channel % ${RANGE_TEX_WIDTH}, v_channel / ${RANGE_TEX_WIDTH}), 0);
  float v = r.x + float(q) / 254.0 * (r.y - r.x);
  float t = clamp((v - r.z) / (r.w - r.z), 0.0, 1.0);
  o_color = texelFetch(u_lut, ivec2(int(t * 255.0 + 0.5), 0), 0);
}`;

type UniformName =
  | "u_columns"
  | "u_count"
  | "u_full"
  | "u_cell"
  | "u_tile"
  | "u_view"
  | "u_dpr"
  | "u_viewport"
  | "u_values"
  | "u_ranges"
  | "u_lut"
  | "u_mapSize"
  | "u_slotsX"
  | "u_slotsPerLayer"
  | "u_nan";

const UNIFORMS: readonly UniformName[] = [
  "u_columns",
  "u_count",
  "u_full",
  "u_cell",
  "u_tile",
  "u_view",
  "u_dpr",
  "u_viewport",
  "u_values",
  "u_ranges",
  "u_lut",
  "u_mapSize",
  "u_slotsX",
  "u_slotsPerLayer",
  "u_nan",
];

function compile(gl: WebGL2RenderingContext, type: number, source: string): WebGLShader {
  const shader = gl.createShader(type);
  if (shader === null) throw new Error("grid: WebGL2 could not create a shader");
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
    const log = gl.getShaderInfoLog(shader);
    gl.deleteShader(shader);
    throw new Error(`grid: WebGL2 shader failed to compile: ${log ?? "no log"}`);
  }
  return shader;
}

/** Options for tests and constrained devices. */
export interface WebGLRendererOptions {
  /** Use at most this many texture array layers (below the device limit), forcing channel packing. */
  maxArrayLayers?: number;
}

export class WebGLRenderer implements Renderer {
  readonly kind = "webgl2";
  readonly gl: WebGL2RenderingContext;
  private readonly program: WebGLProgram;
  private readonly vao: WebGLVertexArrayObject;
  private readonly cornerBuffer: WebGLBuffer;
  private readonly orderBuffer: WebGLBuffer;
  private readonly valuesTex: WebGLTexture;
  private readonly fullVao: WebGLVertexArrayObject;
  private readonly fullChannelBuffer: WebGLBuffer;
  private readonly fullTileBuffer: WebGLBuffer;
  private readonly fullTex: WebGLTexture;
  private full: FullResTiles | null = null;
  /** The full-resolution tiles' positions must be recomputed (new order or new tiles). */
  private fullDirty = false;
  private order: Int32Array = new Int32Array(0);
  private readonly rangesTex: WebGLTexture;
  private readonly lutTex: WebGLTexture;
  private readonly loc: Record<UniformName, WebGLUniformLocation | null>;
  private readonly maxLayers: number;
  private readonly maxSize: number;
  private packing: Packing | null = null;
  private mapSize: [number, number] = [1, 1];
  private rangeRows = 0;
  private tiles = 0;
  private nan: readonly number[] = [255, 0, 255, 255];

  /** Creates the context and GPU objects; throws when the browser has no WebGL2. */
  constructor(
    readonly canvas: HTMLCanvasElement,
    options: WebGLRendererOptions = {},
  ) {
    const gl = canvas.getContext("webgl2", {
      alpha: true,
      antialias: false,
      depth: false,
      stencil: false,
      premultipliedAlpha: true,
      preserveDrawingBuffer: false,
    });
    if (gl === null) throw new Error("grid: WebGL2 is not available in this browser");
    this.gl = gl;
    const device = gl.getParameter(gl.MAX_ARRAY_TEXTURE_LAYERS) as number;
    this.maxLayers = Math.min(device, options.maxArrayLayers ?? device);
    this.maxSize = gl.getParameter(gl.MAX_TEXTURE_SIZE) as number;

    const program = gl.createProgram();
    const vs = compile(gl, gl.VERTEX_SHADER, VERTEX);
    const fs = compile(gl, gl.FRAGMENT_SHADER, FRAGMENT);
    gl.attachShader(program, vs);
    gl.attachShader(program, fs);
    gl.linkProgram(program);
    gl.deleteShader(vs);
    gl.deleteShader(fs);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
      throw new Error(`grid: WebGL2 program failed to link: ${gl.getProgramInfoLog(program) ?? "no log"}`);
    }
    this.program = program;
    this.loc = Object.fromEntries(UNIFORMS.map((n) => [n, gl.getUniformLocation(program, n)])) as Record<
      UniformName,
      WebGLUniformLocation | null
    >;

    // Attribute 0: the tile's corner (shared quad); 1 and 2: one int per instance.
    const corners = (buffer: WebGLBuffer): void => {
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.enableVertexAttribArray(0);
      gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    };
    const perInstance = (location: number): WebGLBuffer => {
      const buffer = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.enableVertexAttribArray(location);
      gl.vertexAttribIPointer(location, 1, gl.INT, 0, 0);
      gl.vertexAttribDivisor(location, 1);
      return buffer;
    };

    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    this.cornerBuffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.cornerBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([0, 0, 1, 0, 0, 1, 1, 1]), gl.STATIC_DRAW);
    corners(this.cornerBuffer);
    this.orderBuffer = perInstance(1);
    gl.bindVertexArray(null);
    // The main draw leaves a_tile disabled: its constant value must be an int, or WebGL2 refuses to draw.
    gl.vertexAttribI4i(2, 0, 0, 0, 0);

    this.fullVao = gl.createVertexArray();
    gl.bindVertexArray(this.fullVao);
    corners(this.cornerBuffer);
    this.fullChannelBuffer = perInstance(1);
    this.fullTileBuffer = perInstance(2);
    gl.bindVertexArray(null);

    const texture = (target: number): WebGLTexture => {
      const t = gl.createTexture();
      gl.bindTexture(target, t);
      gl.texParameteri(target, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(target, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texParameteri(target, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(target, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      return t;
    };
    this.valuesTex = texture(gl.TEXTURE_2D_ARRAY);
    this.rangesTex = texture(gl.TEXTURE_2D);
    this.fullTex = texture(gl.TEXTURE_2D_ARRAY);
    this.lutTex = texture(gl.TEXTURE_2D);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
  }

  /** Current channel packing (null before the first layer). */
  get currentPacking(): Packing | null {
    return this.packing;
  }

  setValues(layer: LayerValues): void {
    const gl = this.gl;
    if (gl.isContextLost()) return;
    const { channels, height, width, values } = layer;
    if (values.length !== channels * height * width) {
      throw new Error(`grid: layer values hold ${values.length} bytes, expected ${channels}×${height}×${width}`);
    }
    const p = packChannels(channels, height, width, this.maxLayers, this.maxSize);
    let data = values;
    if (p.slotsPerLayer > 1) {
      data = new Uint8Array(p.texWidth * p.texHeight * p.layers);
      const plane = height * width;
      for (let c = 0; c < channels; c++) {
        const layer = Math.floor(c / p.slotsPerLayer);
        const slot = c - layer * p.slotsPerLayer;
        const ox = (slot % p.slotsX) * width;
        const oy = Math.floor(slot / p.slotsX) * height;
        for (let y = 0; y < height; y++) {
          const src = c * plane + y * width;
          data.set(values.subarray(src, src + width), (layer * p.texHeight + oy + y) * p.texWidth + ox);
        }
      }
    }
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.valuesTex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage3D(
      gl.TEXTURE_2D_ARRAY,
      0,
      gl.R8UI,
      p.texWidth,
      p.texHeight,
      p.layers,
      0,
      gl.RED_INTEGER,
      gl.UNSIGNED_BYTE,
      data,
    );
    this.packing = p;
    this.mapSize = [width, height];
    this.full = null;
  }

  setFullRes(tiles: FullResTiles | null): void {
    const gl = this.gl;
    this.full = tiles;
    this.fullDirty = true;
    if (tiles === null || gl.isContextLost()) return;
    const { channels, height, width, values } = tiles;
    const n = channels.length;
    if (values.length !== n * height * width) {
      throw new Error(`grid: full-resolution tiles hold ${values.length} bytes, expected ${n}×${height}×${width}`);
    }
    if (n > this.maxLayers || height > this.maxSize || width > this.maxSize) {
      throw new Error(
        `grid: ${n} full-resolution maps of ${height}×${width} exceed this GPU's textures (${this.maxLayers} layers of ${this.maxSize}²)`,
      );
    }
    if (n === 0) return;
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.fullTex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage3D(gl.TEXTURE_2D_ARRAY, 0, gl.R8UI, width, height, n, 0, gl.RED_INTEGER, gl.UNSIGNED_BYTE, values);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.fullChannelBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, channels, gl.DYNAMIC_DRAW);
  }

  setRanges(ranges: Float32Array): void {
    const gl = this.gl;
    if (gl.isContextLost()) return;
    const channels = ranges.length / 4;
    const rows = Math.max(1, Math.ceil(channels / RANGE_TEX_WIDTH));
    const padded = new Float32Array(RANGE_TEX_WIDTH * rows * 4);
    padded.set(ranges);
    gl.bindTexture(gl.TEXTURE_2D, this.rangesTex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    if (rows !== this.rangeRows) {
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, RANGE_TEX_WIDTH, rows, 0, gl.RGBA, gl.FLOAT, padded);
      this.rangeRows = rows;
    } else {
      gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, RANGE_TEX_WIDTH, rows, gl.RGBA, gl.FLOAT, padded);
    }
  }

  setColormap(lut: Uint8Array, nanColor: readonly number[]): void {
    const gl = this.gl;
    this.nan = nanColor;
    if (gl.isContextLost()) return;
    gl.bindTexture(gl.TEXTURE_2D, this.lutTex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, 256, 1, gl.RGBA, gl.UNSIGNED_BYTE, lut);
  }

  setOrder(order: Int32Array): void {
    const gl = this.gl;
    this.tiles = order.length;
    this.order = order;
    this.fullDirty = true;
    if (gl.isContextLost()) return;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.orderBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, order, gl.DYNAMIC_DRAW);
  }

  draw(layout: Layout, view: View, dpr: number): void {
    const gl = this.gl;
    if (gl.isContextLost()) return;
    const { width, height } = this.canvas;
    gl.viewport(0, 0, width, height);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const p = this.packing;
    if (p === null || this.tiles === 0 || this.rangeRows === 0) return;
    gl.useProgram(this.program);
    const u = this.loc;
    const count = Math.min(this.tiles, layout.count);
    gl.uniform1i(u.u_columns, layout.columns);
    gl.uniform1i(u.u_count, count);
    gl.uniform1i(u.u_full, 0);
    gl.uniform2f(u.u_cell, layout.cellWidth, layout.cellHeight);
    gl.uniform2f(u.u_tile, layout.tileWidth, layout.tileHeight);
    gl.uniform3f(u.u_view, view.k, view.x, view.y);
    gl.uniform1f(u.u_dpr, dpr);
    gl.uniform2f(u.u_viewport, width, height);
    gl.uniform2i(u.u_mapSize, this.mapSize[0], this.mapSize[1]);
    gl.uniform1i(u.u_slotsX, p.slotsX);
    gl.uniform1i(u.u_slotsPerLayer, p.slotsPerLayer);
    const [r, g, b, a] = this.nan;
    gl.uniform4f(u.u_nan, r / 255, g / 255, b / 255, a / 255);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.valuesTex);
    gl.uniform1i(u.u_values, 0);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.rangesTex);
    gl.uniform1i(u.u_ranges, 1);
    gl.activeTexture(gl.TEXTURE2);
    gl.bindTexture(gl.TEXTURE_2D, this.lutTex);
    gl.uniform1i(u.u_lut, 2);
    gl.bindVertexArray(this.vao);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, count);
    const full = this.full;
    if (full !== null && full.channels.length > 0) {
      if (this.fullDirty) {
        gl.bindBuffer(gl.ARRAY_BUFFER, this.fullTileBuffer);
        gl.bufferData(gl.ARRAY_BUFFER, tilesOf(full.channels, this.order), gl.DYNAMIC_DRAW);
        this.fullDirty = false;
      }
      gl.uniform1i(u.u_full, 1);
      gl.uniform2i(u.u_mapSize, full.width, full.height);
      gl.uniform1i(u.u_slotsX, 1);
      gl.uniform1i(u.u_slotsPerLayer, 1);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.fullTex);
      gl.bindVertexArray(this.fullVao);
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, full.channels.length);
    }
    gl.bindVertexArray(null);
  }

  /** Frees every GPU object and the context itself (browsers cap live contexts at ~16). */
  destroy(): void {
    const gl = this.gl;
    if (!gl.isContextLost()) {
      gl.deleteTexture(this.valuesTex);
      gl.deleteTexture(this.fullTex);
      gl.deleteBuffer(this.fullChannelBuffer);
      gl.deleteBuffer(this.fullTileBuffer);
      gl.deleteVertexArray(this.fullVao);
      gl.deleteTexture(this.rangesTex);
      gl.deleteTexture(this.lutTex);
      gl.deleteBuffer(this.cornerBuffer);
      gl.deleteBuffer(this.orderBuffer);
      gl.deleteVertexArray(this.vao);
      gl.deleteProgram(this.program);
      gl.getExtension("WEBGL_lose_context")?.loseContext();
    }
    this.packing = null;
  }
}
