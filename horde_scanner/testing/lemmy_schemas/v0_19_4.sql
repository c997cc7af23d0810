-- Lemmy 0.19.4-0.19.x: image_upload renamed local_image (2023-10-24-131607_proxy_links, first
-- shipped in 0.19.4), local_user_id nullable (2024-03-06-104706_local_image_user_opt): a row
-- with no user is a generated thumbnail (StoreLinkPreviews). remote_image and image_details
-- (0.19.6) hold no uploader and are not read.
\i common_0_19.sql
CREATE TABLE local_image (
    local_user_id int REFERENCES local_user ON UPDATE CASCADE ON DELETE CASCADE,
    pictrs_alias text PRIMARY KEY,
    pictrs_delete_token text NOT NULL,
    published timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_image_upload_local_user_id ON local_image (local_user_id);
CREATE TABLE remote_image (
    link text PRIMARY KEY,
    published timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE image_details (
    link text PRIMARY KEY,
    width int NOT NULL,
    height int NOT NULL,
    content_type text NOT NULL
);
