-- Rows as Lemmy writes them, for the provenance tests (testing/lemmy_db.py loads this after a
-- version's tables; ${published}, ${actor_id}, ${img} are that version's column names and
-- image link form). The positive image is ${upload}: uploaded by local user bob an hour ago,
-- used as a post's URL, bob's avatar, a community banner, in a remote author's comment
-- (markdown, with pict-rs query parameters) and in a private message. ${thumb} is the
-- thumbnail Lemmy generated for a federated post; ${other} is an unrelated upload.
INSERT INTO instance (id, domain) VALUES
    (1, 'lemmy.local'), (2, 'remote.example'), (3, 'far.example');
INSERT INTO site (id, name, ${actor_id}, instance_id, private_key) VALUES
    (1, 'Local', 'https://lemmy.local/', 1, 'SITE-PRIVATE-KEY');
INSERT INTO local_site (id, site_id) VALUES (1, 1);
INSERT INTO person (id, name, display_name, ${actor_id}, local, instance_id, avatar, private_key) VALUES
    (1, 'admin', NULL, 'https://lemmy.local/u/admin', true, 1, NULL, 'ADMIN-PRIVATE-KEY'),
    (2, 'bob', 'Bob', 'https://lemmy.local/u/bob', true, 1, '${img}${upload}', 'BOB-PRIVATE-KEY'),
    (3, 'mallory', NULL, 'https://remote.example/u/mallory', false, 2, NULL, NULL),
    (4, 'carol', NULL, 'https://lemmy.local/u/carol', true, 1, NULL, 'CAROL-PRIVATE-KEY');
INSERT INTO local_user (id, person_id, password_encrypted, email, totp_2fa_secret, admin) VALUES
    (1, 1, '$$argon2id$$v=19$$admin-hash', 'admin@lemmy.local', 'ADMINTOTPSECRET', true),
    (2, 2, '$$argon2id$$v=19$$bob-hash', 'bob@mail.example', NULL, false),
    (3, 4, '$$argon2id$$v=19$$carol-hash', 'carol@mail.example', NULL, false);
INSERT INTO community (id, name, title, ${actor_id}, local, instance_id, banner, private_key) VALUES
    (1, 'pics', 'Pictures', 'https://lemmy.local/c/pics', true, 1, '${img}${upload}', 'C-KEY'),
    (2, 'memes', 'Memes', 'https://remote.example/c/memes', false, 2, NULL, NULL);
INSERT INTO post (id, name, url, body, creator_id, community_id, ${published}, thumbnail_url, ap_id, local) VALUES
    (1, 'look at this', '${img}${upload}', NULL, 2, 1, now() - interval '55 minutes', NULL,
     'https://lemmy.local/post/1', true),
    (2, 'discussion', NULL, 'talk here', 4, 1, now() - interval '50 minutes', NULL,
     'https://lemmy.local/post/2', true),
    (3, 'federated link', 'https://far.example/article', NULL, 3, 2, now() - interval '40 minutes',
     '${img}${thumb}', 'https://remote.example/post/77', false),
    (4, 'unrelated', '${img}${other}', NULL, 4, 1, now() - interval '30 minutes', NULL,
     'https://lemmy.local/post/4', true);
INSERT INTO comment (id, creator_id, post_id, ${comment_extra_col} content, ${published}, ap_id, local) VALUES
    (1, 3, 2, ${comment_extra_val} 'see ![pic](https://lemmy.local/pictrs/image/${upload}?format=webp&thumbnail=256)',
     now() - interval '45 minutes', 'https://remote.example/comment/9', false),
    (2, 4, 2, ${comment_extra_val} 'nothing to see', now() - interval '44 minutes', 'https://lemmy.local/comment/2', true);
INSERT INTO private_message (id, creator_id, recipient_id, content, ${published}, ap_id, local) VALUES
    (1, 2, 4, 'hi ![x](${img}${upload})', now() - interval '42 minutes',
     'https://lemmy.local/private_message/1', true);
SELECT setval('person_id_seq', 10);
SELECT setval('post_id_seq', 10);
SELECT setval('comment_id_seq', 10);
