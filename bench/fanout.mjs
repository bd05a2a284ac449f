// The official openai SDK doing bench/fanout.lua's work: N edits at once
// with Promise.all against the same local emulator. Prints the wall time.
// Usage: node bench/fanout.mjs BASE_URL KEY N IMAGE
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, nStr, image] = process.argv.slice(2);
const n = Number(nStr);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 600000 });
const bytes = fs.readFileSync(image);

const t0 = performance.now();
const results = await Promise.all(
  Array.from({ length: n }, async (_, i) =>
    client.images.edit({
      model: "gpt-image-2-all",
      prompt: `variation ${i + 1}`,
      image: await toFile(bytes, "p.png", { type: "image/png" }),
      size: "64x64",
      response_format: "b64_json",
    })
  )
);
const wall = (performance.now() - t0) / 1000;
if (results.some((r) => !r.data?.[0]?.b64_json)) throw new Error("an answer without an image");
console.log(JSON.stringify({ n, wall }));
