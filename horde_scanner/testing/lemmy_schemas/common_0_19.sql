-- Lemmy 0.19's tables that provenance reads, with the columns Lemmy's diesel schema
-- (crates/db_schema/src/schema.rs at 0.19.3 / 0.19.4) gives them, secrets included (so the
-- read-only role's column grants are tested). Upload tables are in the version's own file.
-- Left out: columns of other concerns (aggregates, ltree paths, enum-typed settings).
CREATE TABLE instance (
    id serial PRIMARY KEY,
    domain varchar(255) NOT NULL UNIQUE,
    published timestamptz NOT NULL DEFAULT now(),
    updated timestamptz,
    software varchar(255),
    version varchar(255)
);
CREATE TABLE site (
    id serial PRIMARY KEY,
    name varchar(20) NOT NULL,
    sidebar text,
    published timestamptz NOT NULL DEFAULT now(),
    icon text,
    banner text,
    description varchar(150),
    actor_id varchar(255) NOT NULL UNIQUE,
    private_key text,
    public_key text NOT NULL DEFAULT '',
    instance_id int NOT NULL REFERENCES instance ON DELETE CASCADE
);
CREATE TABLE local_site (
    id serial PRIMARY KEY,
    site_id int NOT NULL UNIQUE REFERENCES site ON DELETE CASCADE
);
CREATE TABLE person (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    display_name varchar(255),
    avatar text,
    banned boolean NOT NULL DEFAULT false,
    published timestamptz NOT NULL DEFAULT now(),
    actor_id varchar(255) NOT NULL UNIQUE,
    bio text,
    local boolean NOT NULL DEFAULT true,
    private_key text,
    public_key text NOT NULL DEFAULT '',
    banner text,
    deleted boolean NOT NULL DEFAULT false,
    bot_account boolean NOT NULL DEFAULT false,
    ban_expires timestamptz,
    instance_id int NOT NULL REFERENCES instance ON DELETE CASCADE
);
CREATE TABLE local_user (
    id serial PRIMARY KEY,
    person_id int NOT NULL UNIQUE REFERENCES person ON DELETE CASCADE,
    password_encrypted text NOT NULL,
    email text UNIQUE,
    totp_2fa_secret text,
    admin boolean NOT NULL DEFAULT false
);
CREATE TABLE community (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    title varchar(255) NOT NULL,
    description text,
    removed boolean NOT NULL DEFAULT false,
    published timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    actor_id varchar(255) NOT NULL UNIQUE,
    local boolean NOT NULL DEFAULT true,
    private_key text,
    public_key text NOT NULL DEFAULT '',
    icon text,
    banner text,
    instance_id int NOT NULL REFERENCES instance ON DELETE CASCADE
);
CREATE TABLE post (
    id serial PRIMARY KEY,
    name varchar(200) NOT NULL,
    url varchar(2000),
    body text,
    creator_id int NOT NULL REFERENCES person ON DELETE CASCADE,
    community_id int NOT NULL REFERENCES community ON DELETE CASCADE,
    removed boolean NOT NULL DEFAULT false,
    locked boolean NOT NULL DEFAULT false,
    published timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    nsfw boolean NOT NULL DEFAULT false,
    thumbnail_url text,
    ap_id varchar(255) NOT NULL UNIQUE,
    local boolean NOT NULL DEFAULT true
);
CREATE INDEX idx_post_published ON post (published DESC);
CREATE INDEX idx_post_creator ON post (creator_id);
CREATE INDEX idx_post_url ON post (url);
CREATE TABLE comment (
    id serial PRIMARY KEY,
    creator_id int NOT NULL REFERENCES person ON DELETE CASCADE,
    post_id int NOT NULL REFERENCES post ON DELETE CASCADE,
    content text NOT NULL,
    removed boolean NOT NULL DEFAULT false,
    published timestamptz NOT NULL DEFAULT now(),
    deleted boolean NOT NULL DEFAULT false,
    ap_id varchar(255) NOT NULL UNIQUE,
    local boolean NOT NULL DEFAULT true
);
CREATE INDEX idx_comment_published ON comment (published DESC);
CREATE INDEX idx_comment_creator ON comment (creator_id);
CREATE INDEX idx_comment_post ON comment (post_id);
CREATE TABLE private_message (
    id serial PRIMARY KEY,
    creator_id int NOT NULL REFERENCES person ON DELETE CASCADE,
    recipient_id int NOT NULL REFERENCES person ON DELETE CASCADE,
    content text NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    read boolean NOT NULL DEFAULT false,
    published timestamptz NOT NULL DEFAULT now(),
    ap_id varchar(255) NOT NULL UNIQUE,
    local boolean NOT NULL DEFAULT true
);
CREATE TABLE custom_emoji (
    id serial PRIMARY KEY,
    local_site_id int NOT NULL REFERENCES local_site ON DELETE CASCADE,
    shortcode varchar(128) NOT NULL UNIQUE,
    image_url text NOT NULL
);
