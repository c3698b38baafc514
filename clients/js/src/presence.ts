import type { PresenceInfo, PresenceList, PresenceUpdate } from "./types.js";

/** Who is online per team: `presence:list` replaces, `presence:update` amends. */
export class PresenceBook {
  private readonly teams = new Map<string, Map<string, PresenceInfo>>();

  list(frame: PresenceList): Map<string, PresenceInfo> {
    const users = new Map<string, PresenceInfo>();
    for (const { user, name, since } of frame.users) {
      users.set(user, { ...(name != null ? { name } : {}), ...(since !== undefined ? { since } : {}) });
    }
    this.teams.set(frame.team, users);
    return this.get(frame.team);
  }

  update(frame: PresenceUpdate): Map<string, PresenceInfo> {
    let users = this.teams.get(frame.team);
    if (!users) this.teams.set(frame.team, (users = new Map<string, PresenceInfo>()));
    if (frame.status === "offline") users.delete(frame.user);
    // The update carries no name or since; a user already listed keeps theirs.
    else if (!users.has(frame.user)) users.set(frame.user, {});
    return this.get(frame.team);
  }

  /** A copy: the app may keep or change it. */
  get(team: string): Map<string, PresenceInfo> {
    const copy = new Map<string, PresenceInfo>();
    for (const [user, info] of this.teams.get(team) ?? []) copy.set(user, { ...info });
    return copy;
  }

  forget(team: string): void {
    this.teams.delete(team);
  }
}
