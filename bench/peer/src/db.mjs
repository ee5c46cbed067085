// PostgreSQL: the pool, the schema (created at start under an advisory lock, so that
// instances starting together do not race), and every query the server makes.

import crypto from 'node:crypto';
import pg from 'pg';

// BIGINT (ids, seqs, counts) as JS numbers: every value here stays below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

const SCHEMA_LOCK = 0x62617470; // any constant shared by every instance

const SCHEMA = `
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);
CREATE TABLE IF NOT EXISTS communities (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT    NOT NULL,
    owner_id   BIGINT  NOT NULL REFERENCES users (id),
    created_at BIGINT  NOT NULL
);
CREATE TABLE IF NOT EXISTS community_members (
    community_id BIGINT  NOT NULL REFERENCES communities (id),
    user_id      BIGINT  NOT NULL REFERENCES users (id),
    role         TEXT    NOT NULL,
    joined_at    BIGINT  NOT NULL,
    PRIMARY KEY (community_id, user_id)
);
CREATE INDEX IF NOT EXISTS community_members_user ON community_members (user_id);
CREATE TABLE IF NOT EXISTS channels (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    community_id  BIGINT  NOT NULL REFERENCES communities (id),
    name          TEXT    NOT NULL,
    private       BOOLEAN NOT NULL,
    last_seq      BIGINT  NOT NULL DEFAULT 0,
    last_event_at BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    CONSTRAINT channels_community_name_key UNIQUE (community_id, name)
);
CREATE INDEX IF NOT EXISTS channels_last_event ON channels (last_event_at);
CREATE TABLE IF NOT EXISTS channel_members (
    channel_id BIGINT  NOT NULL REFERENCES channels (id),
    user_id    BIGINT  NOT NULL REFERENCES users (id),
    read_seq   BIGINT  NOT NULL DEFAULT 0,
    joined_at  BIGINT  NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX IF NOT EXISTS channel_members_user ON channel_members (user_id);
CREATE TABLE IF NOT EXISTS messages (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id    BIGINT  NOT NULL REFERENCES channels (id),
    seq           BIGINT  NOT NULL,
    event_seq     BIGINT  NOT NULL,
    sender_id     BIGINT  NOT NULL REFERENCES users (id),
    content       TEXT    NOT NULL,
    client_msg_id TEXT,
    created_at    BIGINT  NOT NULL,
    edited_at     BIGINT,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    CONSTRAINT messages_channel_seq_key UNIQUE (channel_id, seq),
    CONSTRAINT messages_channel_event_seq_key UNIQUE (channel_id, event_seq),
    CONSTRAINT messages_client_msg_id_key UNIQUE (channel_id, sender_id, client_msg_id)
);
`;

const MESSAGE_COLUMNS = `m.id, m.channel_id, c.community_id, m.seq, m.event_seq, m.sender_id,
  m.content, m.client_msg_id, m.created_at, m.edited_at, m.deleted
  FROM messages m JOIN channels c ON c.id = m.channel_id`;

export const toMessage = (r) => ({
  id: r.id,
  channelId: r.channel_id,
  communityId: r.community_id,
  seq: r.seq,
  eventSeq: r.event_seq,
  senderId: r.sender_id,
  content: r.content,
  clientMsgId: r.client_msg_id,
  createdAt: r.created_at,
  editedAt: r.edited_at,
  deleted: r.deleted,
});

const toUser = (r) => ({ id: r.id, username: r.username, displayName: r.display_name });
const toChannel = (r) => ({
  id: r.id,
  communityId: r.community_id,
  name: r.name,
  private: r.private,
  lastSeq: r.last_seq,
});

export const isUniqueViolation = (e, constraint) => e?.code === '23505' && (!constraint || e.constraint === constraint);

export class Store {
  constructor({ url, max }) {
    this.pool = new pg.Pool({ connectionString: url, max });
    this.pool.on('error', (e) => console.error('peer: idle pg client error:', e.message));
  }

  /** Creates the schema, once, whoever else starts at the same time. */
  async migrate() {
    const client = await this.pool.connect();
    try {
      await client.query('SELECT pg_advisory_lock($1)', [SCHEMA_LOCK]);
      try {
        await client.query(SCHEMA);
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [SCHEMA_LOCK]);
      }
    } finally {
      client.release();
    }
  }

  /** The token secret every instance shares: the first instance to start makes it. */
  async tokenSecret() {
    await this.pool.query('INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING', [
      'token_secret',
      crypto.randomBytes(32).toString('base64'),
    ]);
    const { rows } = await this.pool.query('SELECT value FROM settings WHERE key = $1', ['token_secret']);
    return rows[0].value;
  }

  async ping() {
    try {
      await this.pool.query('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  async close() {
    await this.pool.end();
  }

  async #one(sql, params) {
    const { rows } = await this.pool.query(sql, params);
    return rows[0] ?? null;
  }

  // ---- users ----

  /** The new user, or null if the username is taken. */
  async insertUser(username, displayName, hash, now) {
    const row = await this.#one(
      `INSERT INTO users (username, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (username) DO NOTHING RETURNING id, username, display_name`,
      [username, displayName, hash, now],
    );
    return row && toUser(row);
  }

  credentials(username) {
    return this.#one('SELECT id, password_hash FROM users WHERE username = $1', [username]);
  }

  async user(id) {
    const row = await this.#one('SELECT id, username, display_name FROM users WHERE id = $1', [id]);
    return row && toUser(row);
  }

  async userByName(username) {
    const row = await this.#one('SELECT id, username, display_name FROM users WHERE username = $1', [username]);
    return row && toUser(row);
  }

  // ---- communities ----

  async insertCommunity(owner, name, now) {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query(
        'INSERT INTO communities (name, owner_id, created_at) VALUES ($1, $2, $3) RETURNING id',
        [name, owner, now],
      );
      await client.query(
        'INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)',
        [rows[0].id, owner, 'owner', now],
      );
      await client.query('COMMIT');
      return { id: rows[0].id, name, role: 'owner' };
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {});
      throw e;
    } finally {
      client.release();
    }
  }

  async communitiesOf(user) {
    const { rows } = await this.pool.query(
      `SELECT c.id, c.name, cm.role FROM community_members cm JOIN communities c ON c.id = cm.community_id
       WHERE cm.user_id = $1 ORDER BY c.id`,
      [user],
    );
    return rows;
  }

  async communityRole(community, user) {
    const row = await this.#one('SELECT role FROM community_members WHERE community_id = $1 AND user_id = $2', [
      community,
      user,
    ]);
    return row?.role ?? null;
  }

  async communityExists(community) {
    return (await this.#one('SELECT id FROM communities WHERE id = $1', [community])) !== null;
  }

  async communityMembers(community) {
    const { rows } = await this.pool.query(
      `SELECT u.id, u.username, u.display_name, cm.role FROM community_members cm JOIN users u ON u.id = cm.user_id
       WHERE cm.community_id = $1 ORDER BY u.id`,
      [community],
    );
    return rows.map((r) => ({ ...toUser(r), role: r.role }));
  }

  /** True if the user was not a member yet. */
  async insertCommunityMember(community, user, now) {
    const { rowCount } = await this.pool.query(
      `INSERT INTO community_members (community_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3)
       ON CONFLICT DO NOTHING`,
      [community, user, now],
    );
    return rowCount === 1;
  }

  // ---- channels ----

  /** The new channel (its creator a member), or null if the name is taken in the community. */
  async insertChannel(community, creator, name, isPrivate, now) {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query(
        `INSERT INTO channels (community_id, name, private, last_seq, last_event_at, created_at)
         VALUES ($1, $2, $3, 0, $4, $4) ON CONFLICT (community_id, name) DO NOTHING
         RETURNING id, community_id, name, private, last_seq`,
        [community, name, isPrivate, now],
      );
      if (rows.length === 0) {
        await client.query('ROLLBACK');
        return null;
      }
      await client.query(
        'INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3)',
        [rows[0].id, creator, now],
      );
      await client.query('COMMIT');
      return toChannel(rows[0]);
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {});
      throw e;
    } finally {
      client.release();
    }
  }

  async visibleChannels(community, user) {
    const { rows } = await this.pool.query(
      `SELECT c.id, c.community_id, c.name, c.private, c.last_seq FROM channels c
       WHERE c.community_id = $1 AND (NOT c.private OR EXISTS
         (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2))
       ORDER BY c.id`,
      [community, user],
    );
    return rows.map(toChannel);
  }

  /** The channel with the user's standing in it and in its community, or null. */
  async channelAccess(channel, user) {
    const row = await this.#one(
      `SELECT c.id, c.community_id, c.name, c.private, c.last_seq,
         (SELECT cm.role FROM community_members cm WHERE cm.community_id = c.community_id AND cm.user_id = $2) AS role,
         EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = $2) AS member
       FROM channels c WHERE c.id = $1`,
      [channel, user],
    );
    return row && { channel: toChannel(row), communityRole: row.role, channelMember: row.member };
  }

  /** Of `channels`, those of `community` the user is a member of, ascending. */
  async memberChannelsAmong(community, user, channels) {
    if (channels.length === 0) return [];
    const { rows } = await this.pool.query(
      `SELECT m.channel_id FROM channel_members m JOIN channels c ON c.id = m.channel_id
       WHERE m.user_id = $1 AND c.community_id = $2 AND m.channel_id = ANY($3::bigint[]) ORDER BY m.channel_id`,
      [user, community, channels],
    );
    return rows.map((r) => r.channel_id);
  }

  async insertChannelMember(channel, user, now) {
    const { rowCount } = await this.pool.query(
      `INSERT INTO channel_members (channel_id, user_id, read_seq, joined_at) VALUES ($1, $2, 0, $3)
       ON CONFLICT DO NOTHING`,
      [channel, user, now],
    );
    return rowCount === 1;
  }

  async deleteChannelMember(channel, user) {
    const { rowCount } = await this.pool.query('DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2', [
      channel,
      user,
    ]);
    return rowCount === 1;
  }

  async channelMemberIds(channel) {
    const { rows } = await this.pool.query('SELECT user_id FROM channel_members WHERE channel_id = $1', [channel]);
    return rows.map((r) => r.user_id);
  }

  async recentlyActive(sinceMs) {
    const { rows } = await this.pool.query(
      'SELECT id, community_id, last_seq FROM channels WHERE last_event_at >= $1',
      [sinceMs],
    );
    return rows;
  }

  // ---- messages ----

  async message(id) {
    const row = await this.#one(`SELECT ${MESSAGE_COLUMNS} WHERE m.id = $1`, [id]);
    return row && toMessage(row);
  }

  async messageByClientId(channel, sender, clientMsgId) {
    const row = await this.#one(
      `SELECT ${MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND m.sender_id = $2 AND m.client_msg_id = $3`,
      [channel, sender, clientMsgId],
    );
    return row && toMessage(row);
  }

  /** Runs `work(client)` in a transaction on one pooled connection. */
  async transaction(work) {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query(result === undefined ? 'ROLLBACK' : 'COMMIT');
      return result;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {});
      throw e;
    } finally {
      client.release();
    }
  }

  /**
   * One message, one row, one transaction: the channel's next event sequence and the
   * insert commit together. `{message, fresh}`; a repeated clientMsgId gives the first
   * message with fresh false.
   */
  async insertMessage(channel, sender, content, clientMsgId, now) {
    if (clientMsgId !== null) {
      const existing = await this.messageByClientId(channel, sender, clientMsgId);
      if (existing) return { message: existing, fresh: false };
    }
    try {
      const message = await this.transaction(async (tx) => {
        const seqRow = await tx.query(
          'UPDATE channels SET last_seq = last_seq + 1, last_event_at = $2 WHERE id = $1 RETURNING last_seq, community_id',
          [channel, now],
        );
        const { last_seq: seq, community_id: communityId } = seqRow.rows[0];
        const ins = await tx.query(
          `INSERT INTO messages (channel_id, seq, event_seq, sender_id, content, client_msg_id, created_at, deleted)
           VALUES ($1, $2, $2, $3, $4, $5, $6, FALSE) RETURNING id`,
          [channel, seq, sender, content, clientMsgId, now],
        );
        return {
          id: ins.rows[0].id,
          channelId: channel,
          communityId,
          seq,
          eventSeq: seq,
          senderId: sender,
          content,
          clientMsgId,
          createdAt: now,
          editedAt: null,
          deleted: false,
        };
      });
      return { message, fresh: true };
    } catch (e) {
      // A concurrent send with the same clientMsgId won; ours rolled back, sequence included.
      if (clientMsgId !== null && isUniqueViolation(e, 'messages_client_msg_id_key')) {
        const existing = await this.messageByClientId(channel, sender, clientMsgId);
        if (existing) return { message: existing, fresh: false };
      }
      throw e;
    }
  }

  /** A modify (content) or delete (null) of a live message with the next event sequence; null if it is gone. */
  async changeMessage(message, content, now) {
    const updated = await this.transaction(async (tx) => {
      const seqRow = await tx.query(
        'UPDATE channels SET last_seq = last_seq + 1, last_event_at = $2 WHERE id = $1 RETURNING last_seq',
        [message.channelId, now],
      );
      const eventSeq = seqRow.rows[0].last_seq;
      const res =
        content !== null
          ? await tx.query(
              'UPDATE messages SET content = $2, edited_at = $3, event_seq = $4 WHERE id = $1 AND deleted = FALSE',
              [message.id, content, now, eventSeq],
            )
          : await tx.query(
              "UPDATE messages SET content = '', deleted = TRUE, event_seq = $2 WHERE id = $1 AND deleted = FALSE",
              [message.id, eventSeq],
            );
      if (res.rowCount !== 1) return undefined; // rolled back
      return content !== null
        ? { ...message, eventSeq, content, editedAt: now }
        : { ...message, eventSeq, content: '', deleted: true };
    });
    return updated ?? null;
  }

  /** `limit` messages of a slice: {kind: 'desc'|'asc'|'changes', before, after, since}. */
  async messages(channel, slice, limit) {
    let filter;
    let order;
    const params = [channel, limit];
    if (slice.kind === 'changes') {
      params.push(slice.since);
      filter = 'm.event_seq > $3';
      order = 'm.event_seq ASC';
    } else {
      params.push(slice.after ?? -1, slice.before ?? Number.MAX_SAFE_INTEGER);
      filter = 'm.seq > $3 AND m.seq < $4';
      order = slice.kind === 'asc' ? 'm.seq ASC' : 'm.seq DESC';
    }
    const { rows } = await this.pool.query(
      `SELECT ${MESSAGE_COLUMNS} WHERE m.channel_id = $1 AND ${filter} ORDER BY ${order} LIMIT $2`,
      params,
    );
    return rows.map(toMessage);
  }

  // ---- read markers ----

  /** Moves the marker forward; [seq, moved], or null if the user is not a member. */
  async advanceRead(channel, user, seq) {
    const moved = await this.#one(
      `UPDATE channel_members SET read_seq = $3 WHERE channel_id = $1 AND user_id = $2 AND read_seq < $3
       RETURNING read_seq`,
      [channel, user, seq],
    );
    if (moved) return [moved.read_seq, true];
    const current = await this.#one('SELECT read_seq FROM channel_members WHERE channel_id = $1 AND user_id = $2', [
      channel,
      user,
    ]);
    return current && [current.read_seq, false];
  }

  async unreadRows(user) {
    const { rows } = await this.pool.query(
      `SELECT c.community_id, c.id AS channel_id, c.last_seq, cm.read_seq,
         (SELECT COUNT(*) FROM messages m WHERE m.channel_id = c.id AND m.seq > cm.read_seq
            AND m.deleted = FALSE AND m.sender_id <> $1) AS unread
       FROM channel_members cm JOIN channels c ON c.id = cm.channel_id
       WHERE cm.user_id = $1 ORDER BY c.community_id, c.id`,
      [user],
    );
    return rows;
  }
}
