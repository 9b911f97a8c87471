// The official openai client for Node against llmux (BASE_URL): one stream for MODEL, which
// has to wait for a switch; prints what it read, or the error it raised, as one JSON line.
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "unused", maxRetries: 0 });
let content = "";
try {
  const stream = await client.chat.completions.create({
    model: process.env.MODEL, messages: [{ role: "user", content: "hi" }], stream: true,
  });
  for await (const chunk of stream) content += chunk.choices[0]?.delta?.content ?? "";
  console.log(JSON.stringify({ content }));
} catch (error) {
  console.log(JSON.stringify({ content, error: error.constructor.name, message: error.message }));
}
