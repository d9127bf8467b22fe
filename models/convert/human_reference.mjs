#!/usr/bin/env node
// Reference runner for the @vladmandic/human passive-liveness TFJS graph models
// (antispoof, liveness). Runs the ORIGINAL model.json + .bin with pure-JS
// TensorFlow.js (tfjs-core + tfjs-converter + tfjs-backend-cpu; no tfjs-node,
// whose install fetches a binary from outside the package registries) and
// prints the requested outputs as JSON, so that human_tfjs.py can compare the
// converted ONNX models against the original runtime.
//
// Usage:
//   node human_reference.mjs --model DIR/antispoof.json --input x.f32 \
//        --shape N,128,128,3 [--outputs name1,name2] [--node-prefix DIR]
//
//   --input    raw little-endian float32, NHWC, row-major (what numpy's
//              tofile() writes for a C-contiguous float32 array)
//   --outputs  graph node names to fetch (default: the model's signature
//              outputs); intermediate nodes are allowed
//   --node-prefix  an npm prefix holding node_modules/@tensorflow/*
//              (default: $HUMAN_TFJS_NODE_PREFIX, else resolved next to this
//              script, else ~/.cache/faceguard/node-human)
//
// Output (stdout, one JSON object):
//   {"tfjs_version": "...", "backend": "cpu",
//    "outputs": {"<name>": {"shape": [...], "data": [...float32 values...]}}}

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument: ${a}`);
    const key = a.slice(2);
    const val = argv[i + 1];
    if (val === undefined || val.startsWith('--')) throw new Error(`missing value for ${a}`);
    args[key] = val;
    i++;
  }
  return args;
}

function loadTf(prefixArg) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [];
  if (prefixArg) candidates.push(prefixArg);
  if (process.env.HUMAN_TFJS_NODE_PREFIX) candidates.push(process.env.HUMAN_TFJS_NODE_PREFIX);
  candidates.push(here);
  candidates.push(path.join(os.homedir(), '.cache', 'faceguard', 'node-human'));
  const errors = [];
  for (const prefix of candidates) {
    try {
      const req = createRequire(path.join(path.resolve(prefix), 'package.json'));
      const tf = req('@tensorflow/tfjs-core');
      req('@tensorflow/tfjs-backend-cpu');
      const tfconv = req('@tensorflow/tfjs-converter');
      return { tf, tfconv, prefix };
    } catch (e) {
      errors.push(`${prefix}: ${e.code || e.message}`);
    }
  }
  throw new Error(`cannot load @tensorflow/tfjs-core/-converter/-backend-cpu from any of: ${errors.join('; ')}`);
}

function readModelArtifacts(modelJsonPath) {
  const json = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
  const dir = path.dirname(modelJsonPath);
  const weightSpecs = [];
  const buffers = [];
  for (const group of json.weightsManifest) {
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
    weightSpecs.push(...group.weights);
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    modelTopology: json.modelTopology,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    signature: json.signature,
    userDefinedMetadata: json.userDefinedMetadata,
    weightSpecs,
    weightData,
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  for (const req of ['model', 'input', 'shape']) {
    if (!args[req]) throw new Error(`--${req} is required`);
  }
  const { tf, tfconv } = loadTf(args['node-prefix']);
  await tf.setBackend('cpu');
  await tf.ready();

  const artifacts = readModelArtifacts(args.model);
  const model = await tfconv.loadGraphModel(tf.io.fromMemory(artifacts));

  const shape = args.shape.split(',').map((s) => Number.parseInt(s, 10));
  const raw = fs.readFileSync(args.input);
  const expected = shape.reduce((a, b) => a * b, 1);
  if (raw.byteLength !== expected * 4) {
    throw new Error(`input has ${raw.byteLength} bytes, shape ${shape} needs ${expected * 4}`);
  }
  // copy into an aligned buffer, little-endian float32
  const data = new Float32Array(expected);
  for (let i = 0; i < expected; i++) data[i] = raw.readFloatLE(i * 4);

  const input = tf.tensor(data, shape, 'float32');
  const outNames = args.outputs
    ? args.outputs.split(',')
    : model.outputs.map((o) => o.name);
  const res = model.execute(input, outNames);
  const tensors = Array.isArray(res) ? res : [res];
  const outputs = {};
  for (let i = 0; i < outNames.length; i++) {
    const t = tensors[i];
    outputs[outNames[i]] = { shape: t.shape, data: Array.from(t.dataSync()) };
  }
  tf.dispose([input, ...tensors]);
  process.stdout.write(`${JSON.stringify({
    tfjs_version: tf.version_core,
    backend: tf.getBackend(),
    inputs: model.inputs.map((t) => ({ name: t.name, shape: t.shape })),
    outputs,
  })}\n`);
}

main().catch((err) => {
  process.stderr.write(`human_reference.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
