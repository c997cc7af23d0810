-- 0.19.3: the user's uploads only (the federated post's thumbnail has no row).
INSERT INTO image_upload (local_user_id, pictrs_alias, pictrs_delete_token, published) VALUES
    (2, '${upload}', 'delete-token-upload', now() - interval '1 hour'),
    (3, '${other}', 'delete-token-other', now() - interval '31 minutes');
