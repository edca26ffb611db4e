"""The seed library's Quick Start, with only two lines changed: the import, and the URL (statecar's
port, 6380, instead of Redis's). Run `bash .ci/dev` (README) first, then: python3 quickstart.py
"""

from statecar import RedisStatePersistence, CompressionType  # was: the seed library's import

# Initialize persistence
persistence = RedisStatePersistence(
    redis_url="redis://localhost:6380",  # was: redis://localhost:6379 (Redis itself)
    compression_type=CompressionType.LZ4,
    enable_versioning=True,
    max_versions=10,
)

# Save agent state
state = {
    "user_id": "user_123",
    "conversation": [
        {"role": "user", "content": "Hello! Can you help me plan a trip to Lisbon?"},
        {"role": "assistant", "content": "Of course. When are you going, and for how long?"},
    ],
    "context": {"language": "en", "budget": "medium", "turn": 2},
}
persistence.save_with_metadata(state, "session_123", tags=["travel", "planning"])

# Load it back
loaded_state, metadata = persistence.load_with_metadata("session_123")
print(f"Loaded state: {loaded_state}")
print(f"Version: {metadata.version}")
