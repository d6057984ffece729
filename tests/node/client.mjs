// The official openai Node SDK against a gateway: `node client.mjs <scenario>` prints what the scenario saw as JSON.
// GATEWAY_URL (ending in /v1) and GATEWAY_KEY say where; tests/test_client_matrix.py runs it.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.GATEWAY_URL,
  apiKey: process.env.GATEWAY_KEY,
  maxRetries: 0,
  timeout: 20000,
});
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city.",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const callsOf = (message) => (message.tool_calls ?? []).map((c) => [c.function.name, JSON.parse(c.function.arguments)]);

const scenarios = {
  async chat() {
    const reply = await client.chat.completions.create({ model: "gpt-5", messages: ask, max_tokens: 3 });
    return { content: reply.choices[0].message.content, finish_reason: reply.choices[0].finish_reason, usage: reply.usage };
  },
  async stream() {
    const stream = await client.chat.completions.create({
      model: "gpt-5",
      messages: ask,
      stream: true,
      stop: [" real"],
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish = null;
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.choices.length) {
        text += chunk.choices[0].delta.content ?? "";
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      usage = chunk.usage ?? usage;
    }
    return { text, finish_reason: finish, usage };
  },
  async tools() {
    const reply = await client.chat.completions.create({ model: "gpt-5", messages: ask, tools: [weather] });
    return { finish_reason: reply.choices[0].finish_reason, calls: callsOf(reply.choices[0].message) };
  },
  async toolStream() {
    const stream = client.chat.completions.stream({ model: "gpt-5", messages: ask, tools: [weather] });
    const final = await stream.finalChatCompletion();
    return { finish_reason: final.choices[0].finish_reason, calls: callsOf(final.choices[0].message) };
  },
  async runTools() {
    // The SDK runs the whole round: the call, the function, its result sent back, the answer.
    const runner = client.chat.completions.runTools({
      model: "gpt-5",
      messages: ask,
      tools: [
        {
          type: "function",
          function: {
            name: "get_weather",
            description: "Current weather in a city.",
            parameters: weather.function.parameters,
            parse: JSON.parse,
            function: ({ city }) => `18 C and sunny in ${city}`,
          },
        },
      ],
    });
    return { content: await runner.finalContent(), rounds: (await runner.allChatCompletions()).length };
  },
  async json() {
    const reply = await client.chat.completions.create({
      model: "gpt-5",
      messages: ask,
      response_format: {
        type: "json_schema",
        json_schema: {
          name: "city",
          schema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
        },
      },
    });
    return { parsed: JSON.parse(reply.choices[0].message.content) };
  },
  async error() {
    try {
      await client.chat.completions.create({ model: "gpt-5", messages: ask, tools: [weather], tool_choice: "required" });
      return { raised: false };
    } catch (error) {
      return { raised: true, status: error.status, code: error.code, message: error.message };
    }
  },
};

const scenario = scenarios[process.argv[2]];
if (!scenario) {
  console.error(`unknown scenario ${process.argv[2]}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
console.log(JSON.stringify(await scenario()));
