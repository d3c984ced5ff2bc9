// What the server offers (models by role, voices), read once per key, and the model each job this page
// submitted asked for (a job's record names its model only in its result).

import { getJSON } from "./api.js";

let models = null;
let voices = null;
const submitted = new Map();

export function forget() {
  models = null;
  voices = null;
}

export async function modelsByRole(role) {
  models ??= getJSON("/v1/models").then((answer) => answer.data);
  try {
    return (await models).filter((model) => model.role === role);
  } catch (error) {
    models = null;
    throw error;
  }
}

export async function voiceList() {
  voices ??= getJSON("/v1/audio/voices");
  try {
    return await voices;
  } catch (error) {
    voices = null;
    throw error;
  }
}

/** Fill a <select> with models of `role`, keeping its first option (the server's default). */
export async function fillModels(select, role) {
  const found = await modelsByRole(role);
  select.length = 1;
  for (const model of found) {
    select.add(new Option(model.loaded ? `${model.id} (loaded)` : model.id, model.id));
  }
}

export function remember(jobId, model) {
  if (model) submitted.set(jobId, model);
}

/** The model a job ran, from its result, or the one this page asked for; null if neither is known. */
export function modelOf(job) {
  return job.result?.model || job.result?.models?.llm || submitted.get(job.id) || null;
}
