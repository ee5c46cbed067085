-- Baton's schema, SQLite dialect. Keep in step with ../postgres/0001_init.sql:
-- the same tables, columns and constraint names, so that one set of queries runs on both.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE communities (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    owner_id   INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL
);

CREATE TABLE community_members (
    community_id INTEGER NOT NULL REFERENCES communities (id),
    user_id      INTEGER NOT NULL REFERENCES users (id),
    role         TEXT    NOT NULL,
    joined_at    INTEGER NOT NULL,
    PRIMARY KEY (community_id, user_id)
);
CREATE INDEX community_members_user ON community_members (user_id);

CREATE TABLE channels (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    community_id  INTEGER NOT NULL REFERENCES communities (id),
    name          TEXT    NOT NULL,
    private       BOOLEAN NOT NULL,
    -- the channel's event sequence: the eventSeq of its last new, modify or delete
    last_seq      INTEGER NOT NULL DEFAULT 0,
    -- when last_seq last moved (Unix ms): the `position` emit looks at recent ones
    last_event_at INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    CONSTRAINT channels_community_name_key UNIQUE (community_id, name)
);
CREATE INDEX channels_last_event ON channels (last_event_at);

CREATE TABLE channel_members (
    channel_id INTEGER NOT NULL REFERENCES channels (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    -- the seq of the last message the user has read (never moves backwards)
    read_seq   INTEGER NOT NULL DEFAULT 0,
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members (user_id);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id    INTEGER NOT NULL REFERENCES channels (id),
    seq           INTEGER NOT NULL,
    event_seq     INTEGER NOT NULL,
    sender_id     INTEGER NOT NULL REFERENCES users (id),
    content       TEXT    NOT NULL,
    client_msg_id TEXT,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    CONSTRAINT messages_channel_seq_key UNIQUE (channel_id, seq),
    CONSTRAINT messages_channel_event_seq_key UNIQUE (channel_id, event_seq),
    CONSTRAINT messages_client_msg_id_key UNIQUE (channel_id, sender_id, client_msg_id)
);
