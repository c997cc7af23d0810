"""A Lemmy database of a given version for tests and benchmarks: the tables as that version
defines them (lemmy_schemas/v*.sql) and, optionally, rows as Lemmy writes them
(lemmy_schemas/scenario.sql + the version's upload rows)."""

from __future__ import annotations

import uuid
from importlib import resources
from string import Template

VERSIONS = ("0.18", "0.19.3", "0.19.4", "1.0")
HOST = "lemmy.local"
# The positive image, a federated post's generated thumbnail, an unrelated upload.
UPLOAD_ALIAS = "8f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b.webp"
THUMB_ALIAS = "0b9a8c7d-6e5f-4a3b-9c2d-1e0f2a3b4c5d.jpeg"
OTHER_ALIAS = "11111111-2222-4333-8444-555555555555.png"
# What detect_schema calls each file's version.
DETECTED = {"0.18": "0.18", "0.19.3": "0.19.0-0.19.3", "0.19.4": "0.19.4+", "1.0": "1.0"}


def _file(name: str) -> str:
    return resources.files("horde_scanner.testing").joinpath("lemmy_schemas", name).read_text()


def _expand(text: str) -> str:
    """psql's `\\i file` lines replaced by the file (asyncpg runs plain SQL)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("\\i "):
            lines.append(_expand(_file(line[3:].strip())))
        else:
            lines.append(line)
    return "\n".join(lines)


def schema_sql(version: str) -> str:
    return _expand(_file(f"v{version.replace('.', '_')}.sql"))


def scenario_sql(version: str) -> str:
    v1 = version == "1.0"
    names = {
        "published": "published_at" if v1 else "published",
        "actor_id": "ap_id" if v1 else "actor_id",
        "img": f"https://{HOST}/api/v4/image/" if v1 else f"https://{HOST}/pictrs/image/",
        "upload": UPLOAD_ALIAS,
        "thumb": THUMB_ALIAS,
        "other": OTHER_ALIAS,
        # 1.0's comment carries its community (the post's).
        "comment_extra_col": "community_id," if v1 else "",
        "comment_extra_val": "1," if v1 else "",
    }
    text = Template(_file("scenario.sql")).substitute(names)
    if version != "0.18":
        uploads = _file(f"uploads_v{version.replace('.', '_')}.sql")
        text += "\n" + Template(uploads).substitute(names)
    return text


async def create_lemmy(url: str, version: str, *, rows: bool = True) -> None:
    """Lemmy `version`'s tables (and the scenario's rows) in the database at `url`."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(schema_sql(version))
        if rows:
            await conn.execute(scenario_sql(version))
    finally:
        await conn.close()


def role_sql(password: str, *, database: str = "lemmy", role: str = "horde_scanner_ro") -> str:
    """The docs' read-only role script (data/lemmy_readonly_role.sql), the password filled in
    where psql's `-v pw=...` would put it (and, for tests sharing one server, another database
    and role name)."""
    text = resources.files("horde_scanner.data").joinpath("lemmy_readonly_role.sql").read_text()
    text = text.replace(":'pw'", "'" + password.replace("'", "''") + "'")
    return text.replace("DATABASE lemmy", f"DATABASE {database}").replace("horde_scanner_ro", role)


async def readonly_role_url(url: str, port: int, *, revoke: str = "") -> str:
    """A new role made by the docs' read-only role script in the database at `url` (then
    `revoke`, its `ROLE` standing for the role's name, if given): its own URL on `port`."""
    import asyncpg

    role = "ro_" + uuid.uuid4().hex[:8]
    database = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(role_sql("pw-" + role, database=database, role=role))
        if revoke:
            await conn.execute(revoke.replace("ROLE", role))
    finally:
        await conn.close()
    return f"postgresql://{role}:pw-{role}@127.0.0.1:{port}/{database}"
