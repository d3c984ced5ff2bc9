// The microphone as 16-bit mono PCM pieces at a chosen rate (mic-worklet.js does the resampling).

export class Microphone {
  constructor({ rate = 24000, onPiece = () => {}, onLevel = () => {} } = {}) {
    this.rate = rate;
    this.onPiece = onPiece;
    this.onLevel = onLevel;
    this.stream = null;
    this.context = null;
  }

  get on() {
    return this.stream !== null;
  }

  async start() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("this browser gives no microphone here (it needs http://127.0.0.1 or https)");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      this.context = new AudioContext();
      await this.context.audioWorklet.addModule("/console/mic-worklet.js");
      const source = this.context.createMediaStreamSource(this.stream);
      const node = new AudioWorkletNode(this.context, "mic-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1, // silent, but connected: a node the graph does not pull is never run
        outputChannelCount: [1],
        processorOptions: { rate: this.rate },
      });
      node.port.onmessage = ({ data }) => {
        this.onLevel(data.level);
        this.onPiece(new Uint8Array(data.pcm.buffer));
      };
      source.connect(node);
      node.connect(this.context.destination);
      if (this.context.state === "suspended") await this.context.resume();
    } catch (error) {
      this.stop();
      throw error;
    }
  }

  stop() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) this.context.close().catch(() => {});
    this.stream = null;
    this.context = null;
    this.onLevel(0);
  }
}
