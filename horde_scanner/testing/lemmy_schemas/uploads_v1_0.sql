-- 1.0: person_id is the uploader; a thumbnail's person_id is the post's (remote) author.
INSERT INTO local_image (person_id, pictrs_alias, published_at, thumbnail_for_post_id) VALUES
    (2, '${upload}', now() - interval '1 hour', NULL),
    (3, '${thumb}', now() - interval '40 minutes', 3),
    (4, '${other}', now() - interval '31 minutes', NULL);
