import { describe, expect, it } from "vitest";
import { UnreadBook } from "../../src/unread.js";

function loaded(unread = 3, mentions = 1): UnreadBook {
  const book = new UnreadBook();
  // Loaded: newest 10, read up to 7, so 8..10 counted by the server (one of them mine or
  // deleted is already left out of `unread`).
  book.load([{ team: "t", seq: 10, read: 7, unread, mentions }]);
  return book;
}

describe("UnreadBook", () => {
  it("counts new messages by others once, and their mentions", () => {
    const book = loaded();
    expect(book.message("t", 11, false, true)).toBe("changed");
    expect(book.message("t", 11, false, true)).toBe("none");
    expect(book.mention("t", 11)).toBe("none");
    expect(book.message("t", 12, true, false)).toBe("changed");
    expect(book.get("t")).toEqual({ team: "t", seq: 12, read: 7, unread: 4, mentions: 2 });
    // A mention that comes before its message (another path) counts the message too.
    expect(book.mention("t", 13)).toBe("changed");
    expect(book.message("t", 13, false, true)).toBe("none");
    expect(book.get("t")).toMatchObject({ seq: 13, unread: 5, mentions: 3 });
  });

  it("takes deleted messages it counted away, and asks for a reload for older ones", () => {
    const book = loaded();
    book.message("t", 11, false, true);
    expect(book.deleted("t", 11)).toBe("changed");
    expect(book.get("t")).toMatchObject({ unread: 3, mentions: 1 });
    expect(book.deleted("t", 9)).toBe("reload");
    expect(book.deleted("t", 5)).toBe("none");
  });

  it("reads up to a seq: to the newest is zero, part of what the load counted is a reload", () => {
    const book = loaded();
    book.message("t", 11, false, false);
    expect(book.read("t", 9)).toBe("reload");
    expect(book.read("t", 9)).toBe("none");
    expect(book.read("t", 11)).toBe("changed");
    expect(book.get("t")).toEqual({ team: "t", seq: 11, read: 11, unread: 0, mentions: 0 });
    book.message("t", 12, false, false);
    book.message("t", 13, false, false);
    expect(book.read("t", 12)).toBe("changed");
    expect(book.get("t")).toMatchObject({ read: 12, unread: 1 });
  });

  it("ignores teams it was not loaded with", () => {
    const book = new UnreadBook();
    expect(book.message("t", 1, false, true)).toBe("none");
    expect(book.get("t")).toBeUndefined();
  });
});
