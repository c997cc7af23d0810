-- What horde-scanner reads in Lemmy's database (integrations/lemmy_db.py), and nothing else.
-- One query per "-- name:" block. {published}, {actor}, {uploads}, {uploader_join},
-- {uploader_col}, {thumb_col}, {community_text} are the detected version's names; $n are
-- bound values. Image links are matched with LIKE on the alias in both link forms
-- (/pictrs/image/<alias> and /api/v4/image/<alias>); the patterns are bound as $1 (text[]).

-- name: columns
SELECT c.relname, a.attname FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'p') AND a.attnum > 0
  AND NOT a.attisdropped

-- name: grants
SELECT w.t, w.c, has_column_privilege('public.' || quote_ident(w.t), w.c, 'SELECT')
FROM unnest($1::text[], $2::text[]) AS w(t, c)

-- name: own_host
SELECT i.domain FROM local_site ls JOIN site s ON s.id = ls.site_id
JOIN instance i ON i.id = s.instance_id LIMIT 1

-- name: uploads
SELECT u.pictrs_alias, u.{published}, {thumb_col} AS thumbnail_for_post_id,
       p.id, p.name, p.display_name, p.{actor}, p.local, i.domain
FROM {uploads} u
{uploader_join}
LEFT JOIN instance i ON i.id = p.instance_id
WHERE u.pictrs_alias = ANY($1::text[])

-- name: posts
SELECT po.id, po.name, po.ap_id, po.local, po.{published}, po.removed, po.deleted,
       (po.url LIKE ANY($1::text[])) AS in_url,
       (po.thumbnail_url LIKE ANY($1::text[])) AS in_thumbnail,
       (po.body LIKE ANY($1::text[])) AS in_body,
       c.id, c.name, c.{actor}, ci.domain,
       cr.id, cr.name, cr.display_name, cr.{actor}, cr.local, cri.domain
FROM post po
JOIN community c ON c.id = po.community_id
JOIN instance ci ON ci.id = c.instance_id
JOIN person cr ON cr.id = po.creator_id
JOIN instance cri ON cri.id = cr.instance_id
WHERE po.{published} >= $2 AND po.{published} < $3
  AND (po.url LIKE ANY($1::text[]) OR po.thumbnail_url LIKE ANY($1::text[])
       OR po.body LIKE ANY($1::text[]))
ORDER BY po.id
LIMIT $4

-- name: comments
SELECT co.id, co.ap_id, co.local, co.{published}, co.removed, co.deleted,
       po.id, po.name, po.ap_id,
       c.id, c.name, c.{actor}, ci.domain,
       cr.id, cr.name, cr.display_name, cr.{actor}, cr.local, cri.domain
FROM comment co
JOIN post po ON po.id = co.post_id
JOIN community c ON c.id = po.community_id
JOIN instance ci ON ci.id = c.instance_id
JOIN person cr ON cr.id = co.creator_id
JOIN instance cri ON cri.id = cr.instance_id
WHERE co.{published} >= $2 AND co.{published} < $3
  AND co.content LIKE ANY($1::text[])
ORDER BY co.id
LIMIT $4

-- name: private_messages
SELECT pm.id, pm.ap_id, pm.local, pm.{published}, pm.deleted,
       cr.id, cr.name, cr.display_name, cr.{actor}, cr.local, cri.domain,
       re.id, re.name, re.{actor}
FROM private_message pm
JOIN person cr ON cr.id = pm.creator_id
JOIN instance cri ON cri.id = cr.instance_id
JOIN person re ON re.id = pm.recipient_id
WHERE pm.{published} >= $2 AND pm.{published} < $3
  AND pm.content LIKE ANY($1::text[])
ORDER BY pm.id
LIMIT $4

-- name: persons
SELECT p.id, p.name, p.display_name, p.{actor}, p.local, i.domain,
       (p.avatar LIKE ANY($1::text[])) AS in_avatar,
       (p.banner LIKE ANY($1::text[])) AS in_banner,
       (p.bio LIKE ANY($1::text[])) AS in_bio
FROM person p JOIN instance i ON i.id = p.instance_id
WHERE p.avatar LIKE ANY($1::text[]) OR p.banner LIKE ANY($1::text[])
   OR p.bio LIKE ANY($1::text[])
ORDER BY p.id
LIMIT $2

-- name: communities
SELECT c.id, c.name, c.{actor}, c.local, i.domain,
       (c.icon LIKE ANY($1::text[])) AS in_icon,
       (c.banner LIKE ANY($1::text[])) AS in_banner,
       (c.{community_text} LIKE ANY($1::text[])) AS in_text
FROM community c JOIN instance i ON i.id = c.instance_id
WHERE c.icon LIKE ANY($1::text[]) OR c.banner LIKE ANY($1::text[])
   OR c.{community_text} LIKE ANY($1::text[])
ORDER BY c.id
LIMIT $2

-- name: sites
SELECT s.id, s.name, s.{actor}, i.domain,
       (s.icon LIKE ANY($1::text[])) AS in_icon,
       (s.banner LIKE ANY($1::text[])) AS in_banner,
       (s.sidebar LIKE ANY($1::text[])) AS in_text
FROM site s JOIN instance i ON i.id = s.instance_id
WHERE s.icon LIKE ANY($1::text[]) OR s.banner LIKE ANY($1::text[])
   OR s.sidebar LIKE ANY($1::text[])
ORDER BY s.id
LIMIT $2

-- name: custom_emoji
SELECT e.id, e.shortcode FROM custom_emoji e
WHERE e.image_url LIKE ANY($1::text[])
ORDER BY e.id
LIMIT $2

-- name: thumbnail_posts
SELECT po.id FROM post po WHERE po.thumbnail_url LIKE ANY($1::text[]) AND po.{published} >= $2
ORDER BY po.id LIMIT 10
