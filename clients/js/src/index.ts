export { TeamchatClient } from "./client.js";
export { TeamchatError } from "./errors.js";
export type * from "./types.js";
