"""The cra home's ledger: one DuckDB file for what spans projects (model calls, adapters)."""

from __future__ import annotations

import duckdb

from agent.store.migrations import Schema

LEDGER = Schema("cra ledger")


@LEDGER.migration
def l001_llm_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Every model call, success or failure, with what was asked, what answered and what came back."""
    con.execute(
        """
        CREATE TABLE llm_calls (
            id TEXT PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            run_id TEXT,
            stage TEXT NOT NULL,
            call_type TEXT NOT NULL,         -- structured | text
            provider TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model_requested TEXT NOT NULL,   -- what resolution chose (an adapter or a model)
            model_answered TEXT,             -- what the server says answered
            adapter TEXT,                    -- the adapter asked for, if any
            base_model TEXT NOT NULL,
            resolution TEXT NOT NULL,        -- why that model: override | adapter | role-default | base
            fallback_reason TEXT,            -- set when the adapter could not be used and the base answered
            messages JSON NOT NULL,
            params JSON NOT NULL,            -- request parameters (never keys or headers)
            output_schema JSON,
            raw_response TEXT,               -- the last answer's text
            attempts JSON NOT NULL,          -- every request made: model, outcome, text or error
            parsed JSON,
            schema_ok BOOLEAN NOT NULL,
            repairs INTEGER NOT NULL,
            retries INTEGER NOT NULL,
            latency_ms DOUBLE NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            error_type TEXT,
            error TEXT
        )
        """
    )
    con.execute("CREATE INDEX llm_calls_run ON llm_calls (run_id)")


@LEDGER.migration
def l002_adapters(con: duckdb.DuckDBPyConnection) -> None:
    """The adapter registry: every adapter with its stage, base, status and metrics."""
    con.execute(
        """
        CREATE TABLE adapters (
            name TEXT PRIMARY KEY,
            stage TEXT NOT NULL,
            base_model TEXT NOT NULL,        -- the base it was trained on, as configured
            base_fingerprint TEXT,           -- hash of the base's architecture config
            path TEXT NOT NULL,              -- inside the cra home's adapter store
            rank INTEGER NOT NULL,
            status TEXT NOT NULL,            -- candidate | active | retired
            created_at TIMESTAMP NOT NULL,
            promoted_at TIMESTAMP,
            metadata JSON
        )
        """
    )


@LEDGER.migration
def l003_runs(con: duckdb.DuckDBPyConnection) -> None:
    """Task runs, each stage's input and output, and every retrieval decision."""
    con.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            repo TEXT NOT NULL,
            base_commit TEXT NOT NULL,
            branch TEXT,
            patch TEXT,                      -- path of the run's patch file, when it changed something
            status TEXT NOT NULL,            -- running | succeeded | failed | error | killed
            success BOOLEAN,
            verdict TEXT,                    -- a human's mark: success | failure
            kind TEXT,                       -- the task analysis' kind
            keep_rom BOOLEAN,
            rom_changed BOOLEAN,
            options JSON NOT NULL,           -- retrieval_only, until, include_dirty
            timings JSON,
            validation JSON,
            error TEXT,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        )
        """
    )
    con.execute(
        """
        CREATE TABLE run_stages (
            run_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            source TEXT NOT NULL,            -- model | rules
            input JSON,
            output JSON,
            notes JSON,
            detail JSON,
            call_ids TEXT[],
            seconds DOUBLE NOT NULL,
            error TEXT,
            PRIMARY KEY (run_id, stage)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE decisions (
            run_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            candidate TEXT NOT NULL,
            decision TEXT NOT NULL,
            score DOUBLE,
            reason TEXT
        )
        """
    )


@LEDGER.migration
def l004_training(con: duckdb.DuckDBPyConnection) -> None:
    """Training examples per stage (bootstrapped, logged or imported), and the commits bootstrapping has done."""
    con.execute(
        """
        CREATE TABLE training_examples (
            id TEXT PRIMARY KEY,             -- hash of stage, messages and output: the same pair is stored once
            stage TEXT NOT NULL,
            source TEXT NOT NULL,            -- synthetic | logged | imported:<name>
            family TEXT NOT NULL,            -- base-model family the pair is for (qwen3, qwen2.5-coder, ...)
            repo TEXT,
            commit_sha TEXT,
            commit_date TIMESTAMP,
            split TEXT NOT NULL,             -- train | eval (the newest commits are held out)
            messages JSON NOT NULL,          -- system + user turns, as the agent sends them
            output JSON NOT NULL,            -- the assistant's answer: the stage's schema
            teacher JSON,                    -- teacher model, label or reasoning, tokens, cost, when labelled
            metadata JSON,
            created_at TIMESTAMP NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE bootstrap_commits (
            repo TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            status TEXT NOT NULL,            -- derived | skipped
            reason TEXT,
            pairs INTEGER NOT NULL,
            facts JSON,
            done_at TIMESTAMP NOT NULL,
            PRIMARY KEY (repo, commit_sha)
        )
        """
    )


@LEDGER.migration
def l005_teacher_cache(con: duckdb.DuckDBPyConnection) -> None:
    """Teacher answers by content hash, so a re-run costs nothing."""
    con.execute(
        """
        CREATE TABLE teacher_cache (
            key TEXT PRIMARY KEY,            -- hash of teacher model, purpose and messages
            purpose TEXT NOT NULL,           -- plan | description | judge
            model TEXT NOT NULL,
            answer JSON NOT NULL,            -- validated against the purpose's schema
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            created_at TIMESTAMP NOT NULL
        )
        """
    )


@LEDGER.migration
def l006_rounds(con: duckdb.DuckDBPyConnection) -> None:
    """Preference pairs, and training rounds: immutable snapshots of which examples each round trains on."""
    con.execute(
        """
        CREATE TABLE preference_pairs (
            id TEXT PRIMARY KEY,             -- hash of stage, prompt and both answers
            stage TEXT NOT NULL,
            source TEXT NOT NULL,            -- logged (validated vs failed run) | synthetic (post- vs pre-commit code)
            family TEXT NOT NULL,
            messages JSON NOT NULL,          -- the prompt
            chosen JSON NOT NULL,
            rejected JSON NOT NULL,
            split TEXT NOT NULL,
            provenance JSON,
            created_at TIMESTAMP NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE rounds (
            round INTEGER PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            snapshot_hash TEXT NOT NULL,     -- hash of every (stage, family, kind, example) row of the round
            summary JSON NOT NULL            -- per stage and family: new, replay, dpo, pool, replay share
        )
        """
    )
    con.execute(
        """
        CREATE TABLE round_examples (
            round INTEGER NOT NULL,
            stage TEXT NOT NULL,
            family TEXT NOT NULL,
            kind TEXT NOT NULL,              -- new | replay (SFT examples) | dpo (preference pairs)
            example_id TEXT NOT NULL,
            PRIMARY KEY (round, stage, family, kind, example_id)
        )
        """
    )


@LEDGER.migration
def l007_gate(con: duckdb.DuckDBPyConnection) -> None:
    """Every gate decision: a candidate's score against the active adapter's and the base's on held-out examples."""
    con.execute(
        """
        CREATE TABLE gate_decisions (
            stage TEXT NOT NULL,
            candidate TEXT NOT NULL,
            round INTEGER,
            candidate_score DOUBLE NOT NULL,
            active TEXT,
            active_score DOUBLE,
            base_score DOUBLE NOT NULL,
            examples INTEGER NOT NULL,
            promoted BOOLEAN NOT NULL,
            reason TEXT NOT NULL,
            decided_at TIMESTAMP NOT NULL
        )
        """
    )
