-- 0.19.4+: the generated thumbnail has a row with no user (StoreLinkPreviews).
INSERT INTO local_image (local_user_id, pictrs_alias, pictrs_delete_token, published) VALUES
    (2, '${upload}', 'delete-token-upload', now() - interval '1 hour'),
    (NULL, '${thumb}', 'delete-token-thumb', now() - interval '40 minutes'),
    (3, '${other}', 'delete-token-other', now() - interval '31 minutes');
