// The microphone's samples at the rate the API wants (24 kHz for realtime): resampled by linear
// interpolation, posted as 16-bit PCM in 40 ms pieces with their peak level.

class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.rate = options.processorOptions.rate;
    this.step = sampleRate / this.rate; // input samples per output sample
    this.position = 0; // of the next output sample, from this block's first input sample (-1: the last one's)
    this.last = 0;
    this.size = Math.round(this.rate * 0.04);
    this.piece = new Int16Array(this.size);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input || !input.length) return true;
    const n = input.length;
    const at = (i) => (i < 0 ? this.last : input[i]);
    while (this.position <= n - 1) {
      const i = Math.floor(this.position);
      const fraction = this.position - i;
      const value = fraction ? at(i) + fraction * (at(i + 1) - at(i)) : at(i);
      const clipped = Math.max(-1, Math.min(1, value));
      this.peak = Math.max(this.peak, Math.abs(clipped));
      this.piece[this.filled++] = clipped < 0 ? clipped * 32768 : clipped * 32767;
      if (this.filled === this.size) this.flush();
      this.position += this.step;
    }
    this.position -= n;
    this.last = input[n - 1];
    return true;
  }

  flush() {
    const pcm = this.piece;
    this.port.postMessage({ pcm, level: this.peak }, [pcm.buffer]);
    this.piece = new Int16Array(this.size); // the last one went with the message
    this.filled = 0;
    this.peak = 0;
  }
}

registerProcessor("mic-capture", MicCapture);
