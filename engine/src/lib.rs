//! A durable workflow engine over a runner trait (not built yet: see the engine issue).
