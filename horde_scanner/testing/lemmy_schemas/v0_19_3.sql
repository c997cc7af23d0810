-- Lemmy 0.19.0-0.19.3: uploads in image_upload (migration 2023-08-31-205559_add_image_upload,
-- id dropped and pictrs_alias made the key by 2023-10-24-030352). Every row has a user:
-- thumbnails of (federated) posts are not recorded at all.
\i common_0_19.sql
CREATE TABLE image_upload (
    local_user_id int NOT NULL REFERENCES local_user ON UPDATE CASCADE ON DELETE CASCADE,
    pictrs_alias text PRIMARY KEY,
    pictrs_delete_token text NOT NULL,
    published timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_image_upload_local_user_id ON image_upload (local_user_id);
