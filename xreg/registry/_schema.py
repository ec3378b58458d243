"""The registry's schema as a list of migrations (``PRAGMA user_version`` counts them).

Never edit an entry once released: add one. Entry ``i`` migrates version
``i`` to ``i + 1``.
"""

from __future__ import annotations

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        started       TEXT NOT NULL,
        finished      TEXT,
        status        TEXT NOT NULL,          -- running | finished | failed
        xreg_version  TEXT NOT NULL,
        user          TEXT,
        host          TEXT,
        input_root    TEXT,
        output_root   TEXT,
        model_path    TEXT,
        model_name    TEXT,
        model_sha256  TEXT,
        options       TEXT,                   -- JSON
        counts        TEXT                    -- JSON
    );
    CREATE TABLE images (
        sha256            TEXT PRIMARY KEY,   -- content hash of the file
        size              INTEGER NOT NULL,
        state             TEXT NOT NULL,      -- pending | done
        status            TEXT NOT NULL,      -- sorted | review | unreadable
        dest_path         TEXT NOT NULL,      -- relative to the output folder
        mode              TEXT NOT NULL,      -- copy | move | link | hardlink
        format            TEXT,
        body_part         TEXT,
        body_part_prob    REAL,
        instrument        INTEGER,
        instrument_prob   REAL,
        probabilities     TEXT,               -- JSON: head -> label -> probability
        error             TEXT,
        rows              INTEGER,
        cols              INTEGER,
        frames            INTEGER,
        study_uid         TEXT,
        series_uid        TEXT,
        sop_uid           TEXT,
        accession_key     TEXT,               -- keyed hash, never the number itself
        patient_key       TEXT,               -- keyed hash, never the PatientID itself
        modality          TEXT,
        body_part_examined TEXT,
        view_position     TEXT,
        laterality        TEXT,
        study_date        TEXT,
        model_sha256      TEXT,
        run_id            INTEGER REFERENCES runs(id),
        created           TEXT NOT NULL,
        updated           TEXT NOT NULL
    );
    CREATE INDEX images_status ON images(status, body_part, instrument);
    CREATE INDEX images_state ON images(state);
    CREATE TABLE sources (
        path          TEXT PRIMARY KEY,       -- absolute source path as seen
        sha256        TEXT NOT NULL REFERENCES images(sha256),
        size          INTEGER NOT NULL,
        mtime_ns      INTEGER NOT NULL,
        run_id        INTEGER REFERENCES runs(id),
        removed       INTEGER NOT NULL DEFAULT 0,  -- 1 once --mode move removed it
        seen          TEXT NOT NULL
    );
    CREATE INDEX sources_sha ON sources(sha256);
    """,
    """
    CREATE TABLE hip_studies (
        id             INTEGER PRIMARY KEY,
        run_id         INTEGER REFERENCES runs(id),
        study          TEXT NOT NULL,      -- StudyInstanceUID, keyed accession, or file stem
        side           TEXT,               -- L, R or NULL (unknown)
        status         TEXT NOT NULL,      -- paired, missing_ap, missing_lateral, ambiguous,
                                           -- unknown, unreadable
        reason         TEXT,
        ap_sha256      TEXT,
        lateral_sha256 TEXT,
        ap_path        TEXT,               -- source paths as seen
        lateral_path   TEXT,
        view_sources   TEXT,               -- where each view came from (JSON)
        fracture_prob  REAL,
        decision       TEXT,               -- fracture, no_fracture or NULL (not scored)
        threshold      REAL,
        model_sha256   TEXT,
        dest           TEXT,               -- folder under OUT, when placed
        joined_path    TEXT,               -- the joined two-view image, when written
        created        TEXT NOT NULL
    );
    CREATE INDEX hip_studies_study ON hip_studies(study, side);
    """,
    """
    ALTER TABLE images ADD COLUMN heatmap_path TEXT;       -- overlay under OUT/_heatmaps/
    ALTER TABLE hip_studies ADD COLUMN heatmap_path TEXT;
    """,
    """
    ALTER TABLE images ADD COLUMN scope TEXT;          -- nine | long_bone | other
    ALTER TABLE images ADD COLUMN review_reason TEXT;  -- why a readable film went to _review
    ALTER TABLE images ADD COLUMN fracture INTEGER;    -- single-film fracture head decision
    ALTER TABLE images ADD COLUMN fracture_prob REAL;
    ALTER TABLE images ADD COLUMN warning TEXT;        -- decoded despite a defect, e.g. truncated
    """,
    """
    CREATE TABLE reviews (
        id                INTEGER PRIMARY KEY,
        sha256            TEXT NOT NULL REFERENCES images(sha256),
        reviewer          TEXT NOT NULL,
        created           TEXT NOT NULL,
        model_sha256      TEXT,               -- the model whose labels were reviewed
        model_body_part   TEXT,               -- what that model said, copied at review time
        model_body_part_prob REAL,
        model_instrument  INTEGER,
        model_fracture    INTEGER,
        body_part         TEXT NOT NULL,      -- the reviewer's; 'not_msk' for not an MSK film
        instrument        INTEGER,            -- 1, 0 or NULL (not judged)
        fracture          INTEGER,
        note              TEXT,
        apply_state       TEXT,               -- NULL (not applied) | pending | placed | done
        from_path         TEXT,               -- relative to OUT, while applying
        to_path           TEXT,
        applied           TEXT,
        apply_error       TEXT
    );
    CREATE INDEX reviews_sha ON reviews(sha256, id);
    CREATE INDEX reviews_apply ON reviews(apply_state);
    CREATE INDEX images_confidence ON images(state, body_part_prob);
    CREATE INDEX images_dest ON images(state, dest_path);
    """,
    """
    ALTER TABLE runs ADD COLUMN runtime TEXT;          -- e.g. onnxruntime 1.32.0, torch 2.14.1
    """,
    """
    ALTER TABLE images ADD COLUMN header_audit TEXT;   -- agrees|disagrees|coarse|empty|unmapped
    ALTER TABLE images ADD COLUMN header_term TEXT;    -- the header term compared (normalised)
    ALTER TABLE images ADD COLUMN header_class TEXT;   -- its class, or a coarse set a|b|c
    ALTER TABLE images ADD COLUMN header_tag TEXT;     -- the tag it came from
    ALTER TABLE images ADD COLUMN header_view_audit TEXT;
    """,
    """
    CREATE TABLE dicom_outputs (
        sop_uid       TEXT PRIMARY KEY,       -- the written object's SOP Instance UID
        sha256        TEXT NOT NULL REFERENCES images(sha256),  -- the source film
        kind          TEXT NOT NULL,          -- sr | sc
        series_uid    TEXT NOT NULL,
        path          TEXT NOT NULL,          -- relative to OUT (under _dicom/)
        model_sha256  TEXT NOT NULL,
        created       TEXT NOT NULL,
        stowed        TEXT                    -- when a STOW-RS server took it
    );
    CREATE INDEX dicom_outputs_sha ON dicom_outputs(sha256);
    """,
    """
    ALTER TABLE runs ADD COLUMN header_check TEXT;     -- review | off (--header-check)
    UPDATE runs SET header_check = 'off';              -- runs before v9 had no header check
    """,
    """
    ALTER TABLE images ADD COLUMN study_key TEXT;      -- keyed hash of the --group-by study folder
    ALTER TABLE runs ADD COLUMN group_by TEXT;         -- the --group-by pattern ({patient}/{study})
    CREATE INDEX images_patient ON images(patient_key, study_date);
    CREATE INDEX images_study ON images(study_uid);
    CREATE INDEX images_study_key ON images(study_key);
    CREATE INDEX hip_studies_ap ON hip_studies(ap_sha256);
    CREATE INDEX hip_studies_lateral ON hip_studies(lateral_sha256);
    -- Placed films in study order (film_labels.study): the grouped rollups by study
    -- read it in order instead of sorting every film.
    CREATE INDEX images_film_study ON images(COALESCE(study_uid, study_key))
        WHERE state = 'done';
    -- One row per placed film with its effective labels: the latest review's where
    -- there is one (a NULL instrument/fracture there means not judged: the model's
    -- stands), else the model's. Derived, never stored: xreg.registry.patients.
    -- Scalar subqueries, not joins: a query pays only for the columns it reads.
    CREATE VIEW film_labels AS
    SELECT i.sha256, i.patient_key,
           COALESCE(i.study_uid, i.study_key) AS study,
           CASE
             WHEN i.study_date GLOB '[12][0-9][0-9][0-9][01][0-9][0-3][0-9]'
               THEN substr(i.study_date, 1, 4) || '-' || substr(i.study_date, 5, 2)
                    || '-' || substr(i.study_date, 7, 2)
             WHEN i.study_date GLOB '[12][0-9][0-9][0-9][-.][01][0-9][-.][0-3][0-9]'
               THEN substr(i.study_date, 1, 4) || '-' || substr(i.study_date, 6, 2)
                    || '-' || substr(i.study_date, 9, 2)
           END AS date,
           i.modality, i.view_position, i.laterality, i.status, i.dest_path,
           COALESCE((SELECT r.body_part FROM reviews r WHERE r.sha256 = i.sha256
                     ORDER BY r.id DESC LIMIT 1), i.body_part) AS body_part,
           COALESCE((SELECT r.instrument FROM reviews r WHERE r.sha256 = i.sha256
                     ORDER BY r.id DESC LIMIT 1), i.instrument) AS instrument,
           COALESCE((SELECT r.fracture FROM reviews r WHERE r.sha256 = i.sha256
                     ORDER BY r.id DESC LIMIT 1), i.fracture) AS fracture,
           (SELECT MAX(h.fracture_prob) FROM hip_studies h
             WHERE h.ap_sha256 = i.sha256 OR h.lateral_sha256 = i.sha256) AS hip_score,
           (SELECT MAX(h.decision = 'fracture') FROM hip_studies h
             WHERE h.ap_sha256 = i.sha256 OR h.lateral_sha256 = i.sha256) AS hip_fracture,
           CASE WHEN EXISTS (SELECT 1 FROM reviews r WHERE r.sha256 = i.sha256)
                THEN 'review' ELSE 'model' END AS label_source
    FROM images i
    WHERE i.state = 'done';
    """,
    """
    -- A sort run's films held back as unlike the training films (unfamiliar film,
    -- models disagree, unlike the training films), their share of the films it
    -- predicted, and 1 when that looks like a new site (NULL: runs before v11, hip runs).
    ALTER TABLE runs ADD COLUMN shift_held INTEGER;
    ALTER TABLE runs ADD COLUMN shift_share REAL;
    ALTER TABLE runs ADD COLUMN new_site INTEGER;
    -- The single-film fracture call stands only for a film the model sorted into
    -- one of the nine; for one it held back (review_reason, kept after a review
    -- moves the film) or placed elsewhere it is unknown (NULL), in rows written
    -- before v11 too. The probabilities JSON keeps what the head said.
    UPDATE images SET fracture = NULL, fracture_prob = NULL
     WHERE (fracture IS NOT NULL OR fracture_prob IS NOT NULL)
       AND (review_reason IS NOT NULL OR COALESCE(scope, '') != 'nine');
    """,
    """
    -- Where films came in (xreg listen, xreg pull; docs/pacs.md): per source path the
    -- sender (dicom:AE@host) or the DICOMweb URL without credentials, NULL for a folder;
    -- per run how its films arrived. Runs before v12 read NULL.
    ALTER TABLE sources ADD COLUMN origin TEXT;        -- dicom:AE@host | DICOMweb URL | NULL
    ALTER TABLE runs ADD COLUMN intake TEXT;           -- folder | listen | pull
    -- A resent instance is found by its SOP Instance UID (the listener, xreg pull).
    CREATE INDEX images_sop ON images(sop_uid);
    """,
)

#: Columns of ``hip_studies`` a caller sets through :meth:`Registry.add_hip_study`.
HIP_FIELDS: tuple[str, ...] = (
    "study", "side", "status", "reason", "ap_sha256", "lateral_sha256", "ap_path",
    "lateral_path", "view_sources", "fracture_prob", "decision", "threshold",
    "model_sha256", "dest", "joined_path", "heatmap_path",
)

