"""Schema migrations, applied in order inside one transaction each; `schema_version` records them.

Times are integer epoch milliseconds. Every object row carries its `site_uuid`; every query of
the store filters on it, which is how site isolation is kept.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: sites, auth, groups, devices, files, apps, images, profiles, logs, inventory
    """
    CREATE TABLE sites (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        key_hash TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL REFERENCES sites(uuid),
        created INTEGER NOT NULL
    );
    CREATE TABLE users (
        uuid TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL REFERENCES sites(uuid),
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE access_tokens (
        token_hash TEXT PRIMARY KEY,
        user_uuid TEXT NOT NULL REFERENCES users(uuid),
        site_uuid TEXT NOT NULL,
        expires INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE device_groups (
        uuid TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL,
        parent_uuid TEXT REFERENCES device_groups(uuid),
        name TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX device_groups_site ON device_groups(site_uuid, created);
    CREATE TABLE devices (
        uuid TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL,
        serial_no TEXT NOT NULL,
        manufacturer TEXT NOT NULL DEFAULT '',
        brand TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        group_uuid TEXT REFERENCES device_groups(uuid),
        enabled INTEGER NOT NULL,
        client_version INTEGER NOT NULL DEFAULT 0,
        rtc_enabled INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'offline',
        enrolled INTEGER,
        last_checked_in INTEGER,
        last_disconnected INTEGER,
        license_model_uuid TEXT,
        auto_renew INTEGER,
        token_hash TEXT UNIQUE,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        UNIQUE (site_uuid, serial_no)
    );
    CREATE INDEX devices_site_created ON devices(site_uuid, created);
    CREATE INDEX devices_site_updated ON devices(site_uuid, updated);
    CREATE INDEX devices_site_group ON devices(site_uuid, group_uuid);
    CREATE INDEX devices_site_state ON devices(site_uuid, state);
    CREATE INDEX devices_site_model ON devices(site_uuid, model);
    CREATE INDEX devices_site_checkin ON devices(site_uuid, last_checked_in);
    CREATE TABLE files (
        uuid TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        length INTEGER NOT NULL,
        file_name TEXT NOT NULL,
        content_type TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX files_site_sha ON files(site_uuid, sha256);
    CREATE TABLE apps (
        file_uuid TEXT PRIMARY KEY REFERENCES files(uuid),
        site_uuid TEXT NOT NULL,
        package_name TEXT NOT NULL,
        version_code INTEGER NOT NULL,
        name TEXT NOT NULL,
        enable INTEGER NOT NULL,
        user_uuid TEXT,
        app_info TEXT NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}',
        registered_at INTEGER NOT NULL,
        last_updated INTEGER NOT NULL,
        UNIQUE (site_uuid, package_name, version_code)
    );
    CREATE INDEX apps_site ON apps(site_uuid, registered_at);
    CREATE TABLE otas (
        file_uuid TEXT PRIMARY KEY REFERENCES files(uuid),
        site_uuid TEXT NOT NULL,
        name TEXT NOT NULL,
        enable INTEGER NOT NULL,
        user_uuid TEXT,
        ota_info TEXT NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}',
        device_id TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL DEFAULT 'base',
        post_build TEXT NOT NULL DEFAULT '',
        registered_at INTEGER NOT NULL,
        last_updated INTEGER NOT NULL
    );
    CREATE INDEX otas_site ON otas(site_uuid, registered_at);
    CREATE TABLE profiles (
        uuid TEXT PRIMARY KEY,
        site_uuid TEXT NOT NULL,
        name TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        is_global INTEGER NOT NULL,
        writer_uuid TEXT,
        doc TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX profiles_site ON profiles(site_uuid, created);
    CREATE TABLE profile_progress (
        profile_uuid TEXT NOT NULL REFERENCES profiles(uuid) ON DELETE CASCADE,
        device_uuid TEXT NOT NULL REFERENCES devices(uuid),
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        updated INTEGER NOT NULL,
        PRIMARY KEY (profile_uuid, device_uuid)
    );
    CREATE INDEX profile_progress_device ON profile_progress(device_uuid);
    CREATE TABLE app_inventory (
        device_uuid TEXT PRIMARY KEY REFERENCES devices(uuid),
        category TEXT NOT NULL,
        apps TEXT NOT NULL,
        reported INTEGER NOT NULL
    );
    CREATE TABLE app_status (
        device_uuid TEXT NOT NULL REFERENCES devices(uuid),
        package_name TEXT NOT NULL,
        version_code INTEGER,
        installed INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (device_uuid, package_name)
    );
    CREATE TABLE events (
        id TEXT NOT NULL,
        site_uuid TEXT NOT NULL,
        device_uuid TEXT NOT NULL,
        profile_uuid TEXT,
        at INTEGER NOT NULL,
        received INTEGER NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        doc TEXT NOT NULL,
        PRIMARY KEY (device_uuid, id)
    );
    CREATE INDEX events_site_device ON events(site_uuid, device_uuid, at);
    CREATE INDEX events_site_profile ON events(site_uuid, profile_uuid, at);
    """,
    # 2: deviceNumbers kept by triggers, so reading a group never counts its devices
    """
    ALTER TABLE device_groups ADD COLUMN device_count INTEGER NOT NULL DEFAULT 0;
    UPDATE device_groups SET device_count =
        (SELECT COUNT(*) FROM devices d WHERE d.group_uuid = device_groups.uuid);
    CREATE TRIGGER devices_count_insert AFTER INSERT ON devices WHEN NEW.group_uuid IS NOT NULL
    BEGIN
        UPDATE device_groups SET device_count = device_count + 1 WHERE uuid = NEW.group_uuid;
    END;
    CREATE TRIGGER devices_count_delete AFTER DELETE ON devices WHEN OLD.group_uuid IS NOT NULL
    BEGIN
        UPDATE device_groups SET device_count = device_count - 1 WHERE uuid = OLD.group_uuid;
    END;
    CREATE TRIGGER devices_count_move AFTER UPDATE OF group_uuid ON devices
    WHEN OLD.group_uuid IS NOT NEW.group_uuid
    BEGIN
        UPDATE device_groups SET device_count = device_count - 1 WHERE uuid = OLD.group_uuid;
        UPDATE device_groups SET device_count = device_count + 1 WHERE uuid = NEW.group_uuid;
    END;
    """,
    # 3: the device API (§7): what check-ins report, push state, inventory hash, exclusions
    """
    ALTER TABLE devices ADD COLUMN sleeping INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN interval_s INTEGER NOT NULL DEFAULT 60;
    ALTER TABLE devices ADD COLUMN wake_sent INTEGER;
    ALTER TABLE devices ADD COLUMN report TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE devices ADD COLUMN inventory_hash TEXT;
    CREATE TABLE profile_exclusions (
        profile_uuid TEXT NOT NULL REFERENCES profiles(uuid) ON DELETE CASCADE,
        device_uuid TEXT NOT NULL REFERENCES devices(uuid),
        PRIMARY KEY (profile_uuid, device_uuid)
    );
    """,
    # 4: device keys (§7): the bound key (DER SubjectPublicKeyInfo) and its fingerprint, the
    # challenges registers used (until they expire), the secret challenges are MACed with
    """
    ALTER TABLE devices ADD COLUMN public_key BLOB;
    ALTER TABLE devices ADD COLUMN key_fingerprint TEXT;
    CREATE TABLE used_challenges (
        nonce BLOB PRIMARY KEY,
        device_uuid TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX used_challenges_expires ON used_challenges(expires);
    CREATE TABLE server_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        created INTEGER NOT NULL
    );
    """,
)


def statements(script: str) -> list[str]:
    """Split a migration into complete SQL statements (trigger bodies hold semicolons)."""
    found: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        found.append(pending.strip())
    return found
