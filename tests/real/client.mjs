// The official openai client for Node, against llmux (BASE_URL): one plain, one streamed.
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "What is the capital of France? Answer in one sentence." }];
const plain = await client.chat.completions.create({ model: "smollm2-cpp", messages, temperature: 0, max_tokens: 24 });
let streamed = "";
const stream = await client.chat.completions.create({ model: "smollm2-py", messages, temperature: 0, max_tokens: 24, stream: true });
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
console.log(JSON.stringify({ plain: plain.choices[0].message.content, streamed }));
