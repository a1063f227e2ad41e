// Drives an sdpipe server with the official OpenAI Node SDK, unchanged but
// for the base URL, and exits non-zero saying what failed:
//   node check.mjs http://127.0.0.1:7860
import OpenAI, { toFile } from "openai";
import { deflateSync } from "node:zlib";

const base = process.argv[2];
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "sk-test", maxRetries: 0 });
const fail = (msg) => { console.error("openai-node: " + msg); process.exit(1); };
const png = (b64) => Buffer.from(b64, "base64").subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));

// generate: n, size, quality
let res = await client.images.generate({ prompt: "a lighthouse at dusk", model: "gpt-image-1", n: 2, size: "64x64", quality: "low" });
if (res.data.length !== 2 || !res.data.every((d) => png(d.b64_json))) fail("generate: want 2 PNGs, got " + JSON.stringify(res).slice(0, 200));

// jpeg
res = await client.images.generate({ prompt: "a red fox", size: "64x64", output_format: "jpeg", output_compression: 60 });
if (!Buffer.from(res.data[0].b64_json, "base64").subarray(0, 2).equals(Buffer.from([0xff, 0xd8]))) fail("jpeg: not a JPEG");

// url
res = await client.images.generate({ prompt: "a cat", size: "64x64", response_format: "url" });
const got = await fetch(res.data[0].url);
if (!got.ok || got.headers.get("content-type") !== "image/png") fail("url: " + got.status);

// stream with partial images
const stream = await client.images.generate({ prompt: "a blue square", size: "64x64", quality: "high", stream: true, partial_images: 2 });
let partials = 0, completed = 0;
for await (const ev of stream) {
  if (ev.type === "image_generation.partial_image") partials++;
  else if (ev.type === "image_generation.completed" && png(ev.b64_json)) completed++;
}
if (partials !== 2 || completed !== 1) fail(`stream: ${partials} partial and ${completed} completed events, want 2 and 1`);

// edit: one image, no mask
const first = await client.images.generate({ prompt: "a tree", size: "64x64" });
const image = await toFile(Buffer.from(first.data[0].b64_json, "base64"), "in.png", { type: "image/png" });
res = await client.images.edit({ prompt: "make it autumn", image, size: "64x64" });
if (!png(res.data[0].b64_json)) fail("edit: not a PNG");

// an edit with a mask: its transparent pixels are edited (an RGBA PNG
// made here: opaque but for a transparent square); an opaque mask edits
// nothing and is refused naming the mask
const crcTable = Array.from({ length: 256 }, (_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c >>> 0; });
const crc = (buf) => { let c = 0xffffffff; for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
const chunk = (type, data) => { const t = Buffer.concat([Buffer.from(type), data]); const len = Buffer.alloc(4); len.writeUInt32BE(data.length); const c = Buffer.alloc(4); c.writeUInt32BE(crc(t)); return Buffer.concat([len, t, c]); };
const rgbaPNG = (w, h, alpha) => {
  const raw = Buffer.alloc(h * (1 + 4 * w));
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw[y * (1 + 4 * w) + 1 + 4 * x + 3] = alpha(x, y);
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 6;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
};
const inImage = () => toFile(Buffer.from(first.data[0].b64_json, "base64"), "in.png", { type: "image/png" });
const hole = rgbaPNG(64, 64, (x, y) => (x >= 16 && x < 48 && y >= 16 && y < 48 ? 0 : 255));
res = await client.images.edit({ prompt: "a red door", image: await inImage(), mask: await toFile(hole, "mask.png", { type: "image/png" }), size: "64x64" });
if (!png(res.data[0].b64_json)) fail("edit with a mask: not a PNG");
try {
  await client.images.edit({ prompt: "x", image: await inImage(), mask: await toFile(rgbaPNG(64, 64, () => 255), "mask.png", { type: "image/png" }) });
  fail("edit with an opaque mask: no error");
} catch (e) {
  if (!(e instanceof OpenAI.BadRequestError) || e.param !== "mask" || !/transparent/.test(e.message)) fail("edit with an opaque mask: " + e);
}

// the error envelope, and a size error naming the limit
try {
  await client.images.generate({ prompt: "x", size: "1024x1024" });
  fail("1024x1024: no error");
} catch (e) {
  if (!(e instanceof OpenAI.BadRequestError) || e.param !== "size" || !/limit/.test(e.message)) fail("1024x1024: " + e);
}

// models
const models = await client.models.list();
if (models.data.length !== 1) fail("models: " + JSON.stringify(models.data));
console.log("openai-node: all checks passed");
