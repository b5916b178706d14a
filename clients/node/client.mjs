#!/usr/bin/env node
// Example Node.js client of the gamjeong gRPC server. It loads protos/gamjeong/v1/emotion.proto at run time with
// @grpc/proto-loader (no generated code), makes the health check and the four RPCs, and prints one JSON object.
//
//   npm ci --prefix clients/node
//   node clients/node/client.mjs localhost:50051 [--token TOKEN] [--tls [--ca ca.pem]] [TEXT ...]
//
// The token can also come from GAMJEONG_AUTH_TOKEN. Exit status 0 when every call answered as expected, 1 otherwise.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = path.resolve(HERE, "..", "..", "protos");
const SERVICE = "gamjeong.v1.EmotionClassifier";
const DEADLINE_MS = 30_000;
// keepCase: field names as in the proto (label_ko, not labelKo); longs as strings: uint64 nanoseconds exceed 2^53.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

// grpc.health.v1 is a standard service whose .proto is not part of this repository; its three messages are small
// enough to declare here (protobuf.js JSON form of grpc/health/v1/health.proto).
const HEALTH_PROTO = {
  nested: { grpc: { nested: { health: { nested: { v1: { nested: {
    HealthCheckRequest: { fields: { service: { type: "string", id: 1 } } },
    HealthCheckResponse: {
      fields: { status: { type: "ServingStatus", id: 1 } },
      nested: { ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } } },
    },
    Health: { methods: { Check: { requestType: "HealthCheckRequest", responseType: "HealthCheckResponse" } } },
  } } } } } } },
};

function parseArgs(argv) {
  const args = { target: null, token: process.env.GAMJEONG_AUTH_TOKEN || null, tls: false, ca: null, texts: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--token") args.token = argv[++i];
    else if (arg === "--tls") args.tls = true;
    else if (arg === "--ca") args.ca = argv[++i];
    else if (arg === "-h" || arg === "--help") {
      console.log("usage: node client.mjs HOST:PORT [--token TOKEN] [--tls [--ca ca.pem]] [TEXT ...]");
      process.exit(0);
    } else if (args.target === null) args.target = arg;
    else args.texts.push(arg);
  }
  if (!args.target) {
    console.error("usage: node client.mjs HOST:PORT [--token TOKEN] [--tls [--ca ca.pem]] [TEXT ...]");
    process.exit(2);
  }
  if (args.texts.length === 0) args.texts = ["오늘 정말 행복해요", "너무 무서워요 ㅠㅠ", "진짜 화가 나서 못 참겠어"];
  return args;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function collect(call) {
  return new Promise((resolve, reject) => {
    const items = [];
    call.on("data", (item) => items.push(item));
    call.on("error", reject);
    call.on("end", () => resolve(items));
  });
}

function summary(result) {
  return { label: result.label, label_ko: result.label_ko, score: result.score, truncated: result.truncated };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync("gamjeong/v1/emotion.proto", { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
  const gamjeong = grpc.loadPackageDefinition(definition).gamjeong.v1;
  const health = grpc.loadPackageDefinition(protoLoader.fromJSON(HEALTH_PROTO, LOADER_OPTIONS)).grpc.health.v1;

  const credentials = args.tls
    ? grpc.credentials.createSsl(args.ca ? readFileSync(args.ca) : null)
    : grpc.credentials.createInsecure();
  const classifier = new gamjeong.EmotionClassifier(args.target, credentials);
  const healthClient = new health.Health(args.target, credentials);
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set("authorization", `Bearer ${args.token}`);

  const out = {};
  // Health needs no token (load balancers and probes carry none).
  out.health = {
    overall: (await unary(healthClient, "Check", { service: "" }, new grpc.Metadata())).status,
    [SERVICE]: (await unary(healthClient, "Check", { service: SERVICE }, new grpc.Metadata())).status,
  };

  const info = await unary(classifier, "GetModelInfo", {}, metadata);
  out.model_info = {
    model_name: info.model_name,
    backend: info.backend,
    quantization: info.quantization,
    labels: info.labels.map((label) => label.name),
    max_texts_per_request: info.limits.max_texts_per_request,
  };

  const classified = await unary(classifier, "Classify", { texts: args.texts, top_k: 3 }, metadata);
  out.classify = classified.results.map((r) => ({ ...summary(r), scores: r.scores.length }));

  const chunks = await collect(
    classifier.ClassifyStream({ texts: args.texts, truncation: "TRUNCATION_TRUNCATE" }, metadata, { deadline: deadline() }),
  );
  out.classify_stream = { offsets: chunks.map((c) => c.offset), results: chunks.flatMap((c) => c.results.map(summary)) };

  const chat = classifier.ClassifyChat(metadata, { deadline: deadline() });
  const replies = collect(chat);
  args.texts.forEach((text, i) => chat.write({ id: `m${i}`, conversation_id: "node", text }));
  chat.write({ id: "blank", conversation_id: "node", text: "   " }); // an error result for this id; the stream goes on
  chat.end();
  out.classify_chat = (await replies).map((r) =>
    r.outcome === "result"
      ? { id: r.id, conversation_id: r.conversation_id, ...summary(r.result) }
      : { id: r.id, conversation_id: r.conversation_id, error: { code: r.error.code, message: r.error.message } },
  );

  // A refused call, to show how errors look from Node: a gRPC status code and one sentence.
  try {
    await unary(classifier, "Classify", { texts: [] }, metadata);
    out.refused = null;
  } catch (error) {
    out.refused = { code: grpc.status[error.code], details: error.details };
  }

  classifier.close();
  healthClient.close();
  console.log(JSON.stringify(out, null, 2));
}

main().catch((error) => {
  const code = error.code !== undefined ? grpc.status[error.code] : undefined;
  console.error(JSON.stringify({ error: code ?? String(error), details: error.details ?? error.message }));
  process.exit(1);
});
