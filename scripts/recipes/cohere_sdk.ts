import { CohereClientV2 } from "cohere-ai";

const BASE_URL = process.env.ZERANK_URL ?? "http://localhost:8080";
const MODEL = process.env.ZERANK_MODEL ?? "zerank-1-small";

const documents = [
  "Paris is the capital of France.",
  "Berlin is the capital of Germany.",
  "The Eiffel Tower is in Paris.",
  "France is in Western Europe.",
];
// token: the server's --api-key, if it has one
const cohere = new CohereClientV2({ token: "unused", environment: BASE_URL });
const response = await cohere.rerank({
  model: MODEL,
  query: "What is the capital of France?",
  documents,
  topN: 2,
});
for (const result of response.results) {
  console.log(`${result.relevanceScore.toFixed(4)}  ${documents[result.index]}`);
}
