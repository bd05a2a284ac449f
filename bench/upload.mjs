// The official openai SDK doing bench/upload.lua's work: one edit with five
// images and a mask, given as file streams. Usage: node bench/upload.mjs URL KEY IMG1..IMG5 MASK
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, ...files] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const file = (p) => toFile(fs.createReadStream(p), p.split("/").pop(), { type: "image/png" });
const images = await Promise.all(files.slice(0, 5).map(file));
const res = await client.images.edit({
  model: "gpt-image-2", prompt: "Fuse the five images", image: images, mask: await file(files[5]),
});
if (!res.data?.[0]?.b64_json) throw new Error("no image in the answer");
