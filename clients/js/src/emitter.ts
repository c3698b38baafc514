/** A minimal typed event emitter. */
export class Emitter<Events> {
  private readonly handlers = new Map<keyof Events, Set<(value: never) => void>>();

  /** Adds a handler; returns the function that removes it. */
  on<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => {
      set.delete(handler);
    };
  }

  emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const handler of [...(this.handlers.get(event) ?? [])]) {
      try {
        (handler as (value: Events[K]) => void)(value);
      } catch (error) {
        // An app handler's bug must not leave the client's state half-updated: report it
        // the way an uncaught error would be, after the client finished this frame.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
