-- A read-only role for horde-scanner's provenance (lemmy.database_url). Run it as Lemmy's
-- database owner (lemmy-ansible: user "lemmy", database "lemmy"), the password in psql's
-- variable pw:
--   psql -U lemmy -d lemmy -v pw='a long random password' -f lemmy-readonly-role.sql
-- It can read what provenance shows and nothing else: no password hashes, e-mail addresses,
-- TOTP secrets, private keys or delete tokens (column grants: a table-wide SELECT would
-- include them). It cannot write. Tables it is not granted (e.g. image_upload on 0.19.3, or
-- local_image on 0.19.4+) are skipped below; `person`'s column list is the same on 0.19 and
-- 1.0 except actor_id (0.19) / ap_id (1.0), so both are tried.
CREATE ROLE horde_scanner_ro LOGIN PASSWORD :'pw';
ALTER ROLE horde_scanner_ro SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE lemmy TO horde_scanner_ro;
GRANT USAGE ON SCHEMA public TO horde_scanner_ro;
GRANT SELECT ON instance, post, comment, private_message, custom_emoji TO horde_scanner_ro;
GRANT SELECT (id, site_id) ON local_site TO horde_scanner_ro;
GRANT SELECT (id, person_id) ON local_user TO horde_scanner_ro;
DO $$
DECLARE
    spec text;
    grants text[] := ARRAY[
        'person:id,name,display_name,avatar,banner,bio,local,instance_id,actor_id,ap_id',
        'community:id,name,title,icon,banner,local,instance_id,actor_id,ap_id,description,sidebar',
        'site:id,name,icon,banner,sidebar,instance_id,actor_id,ap_id',
        'image_upload:pictrs_alias,local_user_id,published',
        'local_image:pictrs_alias,local_user_id,person_id,thumbnail_for_post_id,published,published_at'
    ];
    tbl text;
    cols text;
BEGIN
    FOREACH spec IN ARRAY grants LOOP
        tbl := split_part(spec, ':', 1);
        SELECT string_agg(quote_ident(a.attname), ', ') INTO cols
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname = tbl AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attname = ANY(string_to_array(split_part(spec, ':', 2), ','));
        IF cols IS NOT NULL THEN
            EXECUTE format('GRANT SELECT (%s) ON %I TO horde_scanner_ro', cols, tbl);
        END IF;
    END LOOP;
END $$;
