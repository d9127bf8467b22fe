// Reference descriptors from the original runtime: face-api's FaceRecognitionNet
// (dlib ResNet-34) on TensorFlow.js' pure-JS CPU backend.
//
// faceapi_dlib.py runs this to check its ONNX conversion. Each JPEG is decoded
// (jpeg-js), face-api's own Tiny Face Detector finds the faces (its SSD
// MobileNet takes ~11 s per photo on this backend, the tiny one ~2 s), and each
// face becomes a 150x150 uint8 RGB chip: square crop around the box, bilinear
// resize, rounded -- the raw pixels a caller of the ONNX model feeds. The chips
// and face-api's descriptors for them are written to --out-dir:
//   chips.u8        uint8   [n, 150, 150, 3]  NHWC RGB
//   descriptors.f32 float32 [n, 128]          little-endian, face-api's output
//   meta.json       versions, backend and where each chip came from
//
// face-api and its weights come from --package-dir (the unpacked npm tarball);
// its dist/face-api.node-wasm.js requires @tensorflow/tfjs, found through
// NODE_PATH (pinned in faceapi_package.json next to this file). The native tfjs-node
// backend is deliberately not used: its install fetches a binary from outside
// the package registries.
//
// Usage: NODE_PATH=<node_modules> node faceapi_reference.mjs \
//          --package-dir DIR --out-dir DIR IMAGE.jpg [IMAGE.jpg ...]

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';

const CHIP_SIZE = 150;
// Crop side relative to the detector box's longer side: the tiny detector's
// boxes already hold the whole face, so only a little context is added.
const CROP_SCALE = 1.1;
const DETECTOR_OPTIONS = { inputSize: 416, scoreThreshold: 0.5 };

const require = createRequire(import.meta.url);

function log(message) {
  process.stderr.write(`faceapi_reference: ${message}\n`);
}

function parseCli() {
  const { values, positionals } = parseArgs({
    options: {
      'package-dir': { type: 'string' },
      'out-dir': { type: 'string' },
    },
    allowPositionals: true,
  });
  if (!values['package-dir'] || !values['out-dir'] || positionals.length === 0) {
    throw new Error('usage: faceapi_reference.mjs --package-dir DIR --out-dir DIR IMAGE.jpg [...]');
  }
  return { packageDir: path.resolve(values['package-dir']), outDir: path.resolve(values['out-dir']), images: positionals };
}

/** Loads face-api from the package dir and pins TFJS to the pure-JS CPU backend. */
async function loadFaceApi(packageDir) {
  const faceapi = require(path.join(packageDir, 'dist', 'face-api.node-wasm.js'));
  const { tf } = faceapi;
  if (!(await tf.setBackend('cpu'))) throw new Error('TFJS cpu backend failed to initialise');
  await tf.ready();
  const modelDir = path.join(packageDir, 'model');
  await faceapi.nets.tinyFaceDetector.loadFromDisk(modelDir);
  await faceapi.nets.faceRecognitionNet.loadFromDisk(modelDir);
  return faceapi;
}

/** Decodes a JPEG into an int32 [h, w, 3] RGB tensor (jpeg-js: pure JS, no native deps). */
function decodeJpeg(tf, file) {
  const jpeg = require('jpeg-js');
  const { width, height, data } = jpeg.decode(fs.readFileSync(file), { useTArray: true, formatAsRGBA: false });
  return tf.tensor3d(data, [height, width, 3], 'int32');
}

/** Square crop around a detection box, resized to a rounded 150x150 chip (float32 holding 0..255 integers). */
function faceChip(tf, image, box) {
  const [height, width] = image.shape;
  const side = CROP_SCALE * Math.max(box.width, box.height);
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  const normBox = [(cy - side / 2) / height, (cx - side / 2) / width, (cy + side / 2) / height, (cx + side / 2) / width];
  return tf.tidy(() => {
    const batch = tf.expandDims(tf.cast(image, 'float32'));
    const resized = tf.image.cropAndResize(batch, [normBox], [0], [CHIP_SIZE, CHIP_SIZE], 'bilinear', 0);
    return tf.squeeze(tf.clipByValue(tf.round(resized), 0, 255), [0]);
  });
}

async function main() {
  const { packageDir, outDir, images } = parseCli();
  const faceapi = await loadFaceApi(packageDir);
  const { tf } = faceapi;
  const chips = [];
  const descriptors = [];
  const faces = [];
  for (const file of images) {
    const image = decodeJpeg(tf, file);
    const detections = await faceapi.detectAllFaces(image, new faceapi.TinyFaceDetectorOptions(DETECTOR_OPTIONS));
    const imageChips = detections.map((det) => faceChip(tf, image, det.box));
    image.dispose();
    log(`${path.basename(file)}: ${imageChips.length} face(s)`);
    if (imageChips.length === 0) continue;
    const result = await faceapi.nets.faceRecognitionNet.computeFaceDescriptor(imageChips);
    for (let i = 0; i < imageChips.length; i += 1) {
      chips.push(Uint8Array.from(await imageChips[i].data()));
      descriptors.push(result[i]);
      const { x, y, width, height } = detections[i].box;
      faces.push({ image: path.basename(file), box: [x, y, width, height].map((v) => Math.round(v)), score: detections[i].score });
    }
    tf.dispose(imageChips);
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'chips.u8'), Buffer.concat(chips.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength))));
  fs.writeFileSync(path.join(outDir, 'descriptors.f32'), Buffer.concat(descriptors.map((d) => Buffer.from(d.buffer, d.byteOffset, d.byteLength))));
  const meta = {
    faceapi: faceapi.version,
    tfjs: tf.version_core,
    backend: tf.getBackend(),
    chip_size: CHIP_SIZE,
    count: faces.length,
    faces,
  };
  fs.writeFileSync(path.join(outDir, 'meta.json'), `${JSON.stringify(meta, null, 1)}\n`);
  log(`${faces.length} chip(s) via face-api ${meta.faceapi}, tfjs ${meta.tfjs} (${meta.backend} backend)`);
}

main().catch((err) => {
  log(err.stack || String(err));
  process.exit(1);
});
