"""Audio and text media shared by the API and the workers: audio intake, the TTS vocabulary, transcript formats."""
