// PicoGrid's emulated Raspberry Pi Pico (issue 33): rp2040js 1.4.1 running a UF2 with the B1
// bootrom, its USB CDC serial on this process's stdin (host to device) and stdout (device to
// host), and the emulator's gaps that mpremote meets filled here:
//
//  1. Flash writes. rp2040js keeps flash as a byte array read through XIP, but its SSI answers no
//     command and IO_QSPI is unimplemented (reads 0xffffffff, so the bootrom's flash routines see
//     "aborted" and write nothing). FlashChip below models a W25Q16 on the SSI: chip select from
//     IO_QSPI's SS override (as the bootrom and pico-sdk drive it) or, for boot2, the SSI's own
//     framing; commands write enable/disable, page program (NOR: bits only go 1 -> 0), 4/32/64 kB and
//     chip erase, read status 1/2, read data, JEDEC id and unique id (per board: --uid). littlefs
//     then formats, mounts and keeps files; --flash-state FILE keeps the whole 2 MB across runs.
//  2. The host-to-device CDC buffer. rp2040js's USBCDC drops every byte past its 512-byte FIFO.
//     Here the host's bytes wait in an unbounded queue and are handed over only when the device
//     arms its OUT endpoint, at most one packet at a time, as a USB host does; stdin is paused while
//     more than 64 kB wait. An OUT endpoint armed while nothing waits is answered when data comes
//     (rp2040js answers at once with 0 bytes, which keeps the core busy polling).
//  3. Watchdog and machine.reset(). rp2040js only logs a warning when the watchdog fires. Here
//     the chip reboots: a new core and peripherals, the same flash, the watchdog's reason and
//     scratch registers kept (as the chip keeps them), and USB enumerates again.
//  4. BOOTSEL. rp2040js reads the QSPI_SS pin low, i.e. BOOTSEL pressed; here it reads high, and
//     SIGUSR1 reboots the chip with BOOTSEL held for its first 1.5 s (RESET + BOOTSEL on a Pico);
//     SIGUSR2 is the RESET button alone.
//  5. Time. rp2040js jumps over idle time (WFI) to the next timer alarm, so an idle board's clock
//     runs far ahead of the wall. Here emulated time is never let ahead of wall time (scaled by
//     --speed): idle waits pass at wall speed, busy code runs as fast as the host allows (about
//     0.4 emulated us per wall us on this machine), so firmware timeouts and mpremote's agree.
//  6. I2C devices. rp2040js NACKs every address unless the host models a device. Here I2C0 has
//     two INA219s (0x40 port side, 0x41 bus side) in one of three states (--ina219, and on SIGHUP
//     the word in --ina219-file): "absent" (no answer: the firmware's I2C calls fail as on a board
//     without the part), "garbage" (answers, every register reads 0xffff, writes are ignored: a
//     broken or wrong part), "ok" (registers as the datasheet's: config read back as written,
//     shunt 0 V, bus 7.0 V).
//
// Lines on stderr: "usb: connected" when the CDC link is up (after each boot), "reboot: <reason>",
// "flash: ..." notes. Usage:
//   node pico.mjs --uf2 FIRMWARE.uf2 [--bootrom bootrom-B1.bin] [--modules DIR/node_modules]
//                 [--uid 16-hex-digits] [--flash-state FILE] [--speed 1.0]
//                 [--ina219 absent|garbage|ok] [--ina219-file FILE]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = { bootrom: path.join(HERE, 'bootrom-B1.bin'), speed: 1.0, uid: 'e660583883724a32', ina219: 'absent' };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    args[key] = argv[++i];
  }
  args.speed = Number(args.speed);
  if (!args.uf2 && !(args.flashState && fs.existsSync(args.flashState))) {
    throw new Error('--uf2 FIRMWARE.uf2 is required (or an existing --flash-state)');
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const modules = args.modules ?? path.join(HERE, 'node_modules');
const rp = await import(pathToFileURL(path.join(modules, 'rp2040js', 'dist', 'esm', 'index.js')).href);
const { Simulator, USBCDC, BasePeripheral, ConsoleLogger, LogLevel } = rp;

const log = (msg) => process.stderr.write(`${msg}\n`);

const FLASH_START = 0x10000000;
const FLASH_SIZE = 2 * 1024 * 1024; // the Pico's W25Q16JV

// ---- UF2 -----------------------------------------------------------------------------------
function loadUF2(file, flash) {
  const data = fs.readFileSync(file);
  let blocks = 0;
  for (let off = 0; off + 512 <= data.length; off += 512) {
    const b = data.subarray(off, off + 512);
    if (b.readUInt32LE(0) !== 0x0a324655 || b.readUInt32LE(4) !== 0x9e5d5157) continue;
    if (b.readUInt32LE(508) !== 0x0ab16f30) continue;
    const flags = b.readUInt32LE(8);
    if (flags & 1) continue; // "not main flash"
    const addr = b.readUInt32LE(12);
    const size = b.readUInt32LE(16);
    flash.set(b.subarray(32, 32 + size), addr - FLASH_START);
    blocks++;
  }
  if (!blocks) throw new Error(`${file}: no UF2 blocks for main flash`);
  return blocks;
}

// ---- the flash chip behind the SSI ---------------------------------------------------------
const SSI_SR = 0x28, SSI_TXFLR = 0x20, SSI_RXFLR = 0x24, SSI_SSIENR = 0x08, SSI_DR0 = 0x60;
const SR_TFNF = 1 << 1, SR_TFE = 1 << 2, SR_RFNE = 1 << 3;

class FlashChip extends BasePeripheral {
  constructor(rp2040, name, board) {
    super(rp2040, name);
    this.board = board;
    this.regs = new Map();
    this.rx = [];
    this.tx = [];
    this.forced = false; // chip select held low by IO_QSPI's override
    this.wel = false; // write enable latch
  }
  readUint32(offset) {
    if (offset >= SSI_DR0 && offset < 0xf0) {
      const v = this.rx.length ? this.rx.shift() : 0;
      if (!this.forced && !this.rx.length) this.endCommand(); // boot2: SSI frames its own CS
      return v;
    }
    switch (offset) {
      case SSI_SR:
        return SR_TFE | SR_TFNF | (this.rx.length ? SR_RFNE : 0);
      case SSI_TXFLR:
        return 0;
      case SSI_RXFLR:
        return this.rx.length;
      case 0x58: // IDR
        return 0x51535049;
      case 0x5c: // SSI_COMP_VERSION
        return 0x3430312a;
    }
    return this.regs.get(offset) ?? 0;
  }
  writeUint32(offset, value) {
    if (offset >= SSI_DR0 && offset < 0xf0) {
      const byte = value & 0xff;
      this.tx.push(byte);
      this.rx.push(this.answer(this.tx.length - 1));
      if (this.rx.length > 64) this.rx.shift(); // nobody drains it (XIP set-up): keep it bounded
      return;
    }
    if (offset === SSI_SSIENR && !(value & 1)) {
      this.rx = [];
      if (!this.forced) this.tx = [];
    }
    this.regs.set(offset, value >>> 0);
  }
  select(low) {
    if (low && !this.forced) {
      this.tx = [];
      this.rx = [];
    }
    if (!low && this.forced) this.endCommand();
    this.forced = low;
  }
  address() {
    const t = this.tx;
    return ((t[1] << 16) | (t[2] << 8) | t[3]) % FLASH_SIZE;
  }
  // the byte the chip shifts out while the host shifts out tx[index]
  answer(index) {
    const cmd = this.tx[0];
    const flash = this.rp2040.flash;
    switch (cmd) {
      case 0x05: // read status 1: never busy; WEL
        return index >= 1 ? (this.wel ? 0x02 : 0) : 0;
      case 0x35: // read status 2: QE set, so boot2 leaves it alone
        return index >= 1 ? 0x02 : 0;
      case 0x9f: // JEDEC id: Winbond W25Q16JV (2 MB)
        return [0, 0xef, 0x40, 0x15][index] ?? 0;
      case 0x4b: // unique id: 4 dummy bytes, then 8 bytes
        return index >= 5 && index < 13 ? this.board.uid[index - 5] : 0;
      case 0x03: // read data
        return index >= 4 ? flash[(this.address() + index - 4) % FLASH_SIZE] : 0;
      case 0x0b: // fast read, one dummy byte
        return index >= 5 ? flash[(this.address() + index - 5) % FLASH_SIZE] : 0;
      default:
        return index >= 1 ? 0xff : 0;
    }
  }
  endCommand() {
    const t = this.tx;
    this.tx = [];
    if (!t.length) return;
    const flash = this.rp2040.flash;
    const cmd = t[0];
    if (cmd === 0x06) this.wel = true;
    else if (cmd === 0x04) this.wel = false;
    else if (cmd === 0x02 && t.length > 4) {
      if (!this.wel) return;
      const base = ((t[1] << 16) | (t[2] << 8) | t[3]) % FLASH_SIZE;
      for (let i = 4; i < t.length; i++) {
        const a = (base & ~0xff) | ((base + i - 4) & 0xff); // wraps inside the 256-byte page
        flash[a] &= t[i];
      }
      this.wel = false;
      this.board.flashWritten();
    } else if ((cmd === 0x20 || cmd === 0x52 || cmd === 0xd8) && t.length >= 4) {
      if (!this.wel) return;
      const size = { 0x20: 4096, 0x52: 32768, 0xd8: 65536 }[cmd];
      const base = (((t[1] << 16) | (t[2] << 8) | t[3]) % FLASH_SIZE) & ~(size - 1);
      flash.fill(0xff, base, base + size);
      this.wel = false;
      this.board.flashWritten();
    } else if (cmd === 0xc7 || cmd === 0x60) {
      if (!this.wel) return;
      flash.fill(0xff, 0, FLASH_SIZE);
      this.wel = false;
      this.board.flashWritten();
    } else if (cmd === 0x01 || cmd === 0x31) {
      this.wel = false; // status register writes: accepted, nothing to keep
    }
  }
}

// IO_QSPI: six pins' STATUS/CTRL registers kept as written; SS's output override drives the chip
// select of FlashChip; SD1's input override reads back as written (the bootrom's abort flag).
class IOQSPI extends BasePeripheral {
  constructor(rp2040, name, chip) {
    super(rp2040, name);
    this.chip = chip;
    this.regs = new Uint32Array(12);
  }
  readUint32(offset) {
    offset &= 0xfff;
    return offset < 0x30 ? this.regs[offset >> 2] : 0;
  }
  writeUint32(offset, value) {
    if (offset >= 0x30) return;
    this.regs[offset >> 2] = value;
    if (offset === 0x0c) {
      const outover = (value >> 8) & 3;
      this.chip.select(outover === 2); // 2: drive low (selected); 3 high or 0 normal: released
    }
  }
}

// ---- I2C: INA219s modelled on the host --------------------------------------------------------
const INA219_STATES = ['absent', 'garbage', 'ok'];
const I2C_TX_EMPTY = 1 << 4; // IC_RAW_INTR_STAT.TX_EMPTY

class INA219Model {
  constructor(board) {
    this.board = board; // board.ina219: the state, shared by both parts
    this.regs = new Uint16Array(6);
    this.regs[0] = 0x399f; // config at power-on
    this.regs[2] = ((7000 / 4) << 3) | 2; // bus 7.0 V, conversion ready
    this.pointer = 0;
    this.written = []; // bytes of the current write transaction
    this.readHigh = true;
  }

  present() {
    return this.board.ina219 !== 'absent';
  }

  start() {
    this.written = [];
    this.readHigh = true;
  }

  write(value) {
    this.written.push(value);
    if (this.written.length === 1) this.pointer = value % 6;
    else if (this.written.length === 3 && this.board.ina219 === 'ok') {
      this.regs[this.pointer] = (this.written[1] << 8) | this.written[2];
    }
  }

  read() {
    if (this.board.ina219 === 'garbage') return 0xff;
    const reg = this.regs[this.pointer];
    const byte = this.readHigh ? reg >> 8 : reg & 0xff;
    this.readHigh = !this.readHigh;
    return byte;
  }
}

function attachI2C(mcu, devices) {
  const i2c = mcu.i2c[0];
  let dev = null;
  i2c.onStart = () => i2c.completeStart();
  i2c.onConnect = (address) => {
    dev = devices[address];
    const ack = Boolean(dev && dev.present());
    if (ack) dev.start();
    else dev = null;
    i2c.completeConnect(ack);
    // an abort flushes the TX FIFO, so TX_EMPTY is raised, as on the chip; rp2040js leaves it
    // clear and pico-sdk then waits for it until its timeout (ETIMEDOUT instead of the chip's
    // EIO), leaving the abort to fail the next transfer
    if (!ack) i2c.setInterrupts(I2C_TX_EMPTY);
  };
  i2c.onWriteByte = (value) => {
    if (dev) dev.write(value);
    i2c.completeWrite(Boolean(dev));
  };
  i2c.onReadByte = () => i2c.completeRead(dev ? dev.read() : 0xff);
  i2c.onStop = () => {
    dev = null;
    i2c.completeStop();
  };
}

// ---- the board ------------------------------------------------------------------------------
class Board {
  constructor(args) {
    this.args = args;
    this.bootrom = new Uint32Array(new Uint8Array(fs.readFileSync(args.bootrom)).buffer);
    this.uid = Buffer.from(args.uid, 'hex');
    if (this.uid.length !== 8) throw new Error('--uid wants 16 hex digits');
    this.flash = new Uint8Array(FLASH_SIZE).fill(0xff);
    if (args.flashState && fs.existsSync(args.flashState)) {
      this.flash.set(fs.readFileSync(args.flashState).subarray(0, FLASH_SIZE));
      log(`flash: state from ${args.flashState}`);
    }
    if (args.uf2) log(`flash: ${loadUF2(args.uf2, this.flash)} UF2 blocks from ${args.uf2}`);
    this.hostQueue = []; // Buffers from the host, not yet taken by the device
    this.hostQueued = 0;
    this.pendingRead = null; // [endpoint, size] armed by the device while nothing waited
    this.saveTimer = null;
    this.sleepTimer = null;
    this.boots = 0;
    this.bootselUntilNanos = 0;
    this.wallStart = performance.now();
    this.nanosBase = 0; // emulated ns at which the current chip's clock started
    this.wallBase = 0;
    this.setINA219(args.ina219);
    this.ina219s = { 0x40: new INA219Model(this), 0x41: new INA219Model(this) };
  }

  setINA219(state) {
    if (!INA219_STATES.includes(state)) throw new Error(`--ina219 wants one of ${INA219_STATES.join(', ')}`);
    this.ina219 = state;
    log(`i2c: INA219s ${state}`);
  }

  boot(reason, watchdogState) {
    if (this.sim) {
      this.sim.stop();
      this.flash.set(this.sim.rp2040.flash.subarray(0, FLASH_SIZE));
    }
    this.boots++;
    const sim = new Simulator();
    const mcu = sim.rp2040;
    mcu.logger = new ConsoleLogger(LogLevel.Error);
    mcu.loadBootrom(this.bootrom); // resets the chip, which erases rp2040js's flash array
    mcu.flash.set(this.flash);
    // As rp2040js's demo: start at boot2 (flash offset 0). The bootrom's own reset path waits for
    // core 1, which rp2040js does not emulate; its functions (flash, memcpy, floats) serve as usual.
    mcu.core.PC = FLASH_START;
    const chip = new FlashChip(mcu, 'SSI', this);
    mcu.peripherals[0x18000] = chip;
    mcu.peripherals[0x40018] = new IOQSPI(mcu, 'IO_QSPI_BASE', chip);
    // QSPI_SS reads high, as the flash chip's chip select pulls it up on a Pico; rp2040js reads
    // every input low, so rp2.bootsel_button() said "held" at every boot. SIGUSR1 (below)
    // reboots with BOOTSEL held for the first 1.5 s, as a user's RESET + BOOTSEL.
    mcu.qspi[1].padValue = 0x5a; // the SS pad's reset value: input enabled, pull-up (rp2040js: 0)
    mcu.qspi[1].setInputValue(!(this.bootselUntilNanos > 0));
    if (this.bootselUntilNanos > 0) {
      const release = sim.clock.createAlarm(() => mcu.qspi[1].setInputValue(true));
      release.schedule(this.bootselUntilNanos);
      this.bootselUntilNanos = 0;
    }
    const wd = mcu.peripherals[0x40058];
    if (watchdogState) {
      wd.reason = watchdogState.reason;
      wd.scratchData.set(watchdogState.scratch);
    }
    wd.onWatchdogTrigger = () => {
      const state = { reason: wd.reason, scratch: Uint32Array.from(wd.scratchData) };
      setImmediate(() => this.boot(wd.reason & 2 ? 'watchdog (forced)' : 'watchdog (timer)', state));
      sim.stop();
      this.stopped = true;
    };
    this.sim = sim;
    this.mcu = mcu;
    this.pendingRead = null;
    this.attachUSB(mcu);
    for (const dev of Object.values(this.ina219s)) dev.regs[0] = 0x399f; // power-on reset
    attachI2C(mcu, this.ina219s);
    // emulated time continues across reboots (for the wall-speed cap), the chip's clock restarts
    this.wallBase = performance.now();
    this.nanosBase = 0;
    log(`reboot: ${reason} (boot ${this.boots})`);
    this.stopped = false;
    this.run();
  }

  attachUSB(mcu) {
    const cdc = new USBCDC(mcu.usbCtrl);
    this.cdc = cdc;
    cdc.onDeviceConnected = () => log('usb: connected');
    cdc.onSerialData = (buffer) => process.stdout.write(Buffer.from(buffer));
    // replace the 512-byte FIFO by the queue: hand data over only when the device asks
    mcu.usbCtrl.onEndpointRead = (endpoint, size) => {
      if (endpoint !== cdc.outEndpoint) return;
      this.pendingRead = [endpoint, size];
      this.serveRead();
    };
  }

  serveRead() {
    if (!this.pendingRead || !this.hostQueued) return;
    const [endpoint, size] = this.pendingRead;
    this.pendingRead = null;
    const out = Buffer.alloc(Math.min(size, this.hostQueued));
    let n = 0;
    while (n < out.length) {
      const head = this.hostQueue[0];
      const take = Math.min(head.length, out.length - n);
      head.copy(out, n, 0, take);
      n += take;
      if (take === head.length) this.hostQueue.shift();
      else this.hostQueue[0] = head.subarray(take);
    }
    this.hostQueued -= out.length;
    if (this.hostQueued < 16384 && process.stdin.isPaused()) process.stdin.resume();
    this.mcu.usbCtrl.endpointReadDone(endpoint, new Uint8Array(out));
  }

  fromHost(chunk) {
    this.hostQueue.push(chunk);
    this.hostQueued += chunk.length;
    if (this.hostQueued > 65536) process.stdin.pause();
    this.serveRead();
    this.wake();
  }

  flashWritten() {
    if (!this.args.flashState) return;
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => this.saveFlash(), 200);
  }

  saveFlash() {
    this.saveTimer = null;
    if (!this.args.flashState || !this.mcu) return;
    const tmp = `${this.args.flashState}.tmp`;
    fs.writeFileSync(tmp, this.mcu.flash.subarray(0, FLASH_SIZE));
    fs.renameSync(tmp, this.args.flashState);
  }

  wake() {
    if (this.sleepTimer) {
      clearTimeout(this.sleepTimer);
      this.sleepTimer = null;
      setImmediate(() => this.run());
    }
  }

  // Emulate for up to ~20 ms of wall time, then yield to the event loop (stdin, timers).
  run() {
    this.sleepTimer = null;
    if (this.stopped) return;
    const { mcu } = this;
    const clock = this.sim.clock;
    const core = mcu.core;
    const cycleNanos = 1e9 / 125e6;
    const speed = this.args.speed;
    const sliceEnd = performance.now() + 20;
    for (;;) {
      for (let i = 0; i < 20000; i++) {
        if (core.waiting) {
          if (!clock.nextAlarm) {
            this.sleepTimer = setTimeout(() => this.run(), 50); // only an interrupt from outside wakes it
            return;
          }
          const next = clock.nanosToNextAlarm;
          const allowed = (performance.now() - this.wallBase) * 1e6 * speed - clock.nanos;
          if (next > allowed) {
            // idle: let the wall catch up before the next alarm (or until the host sends)
            const ms = Math.max(1, Math.min(50, (next - Math.max(allowed, 0)) / 1e6 / speed));
            this.sleepTimer = setTimeout(() => this.run(), ms);
            return;
          }
          clock.tick(next);
        } else {
          clock.tick(core.executeInstruction() * cycleNanos);
        }
        if (this.stopped) return;
      }
      if (performance.now() > sliceEnd) break;
    }
    setImmediate(() => this.run());
  }
}

const board = new Board(args);
if (process.env.PICO_DEBUG) {
  setInterval(() => {
    const { core } = board.mcu;
    log(`debug: pc=${core.PC.toString(16)} waiting=${core.waiting} t=${(board.sim.clock.nanos / 1e6).toFixed(1)}ms`);
  }, 1000);
}
process.stdin.on('data', (chunk) => board.fromHost(chunk));
process.stdin.on('end', () => {
  if (board.saveTimer) {
    clearTimeout(board.saveTimer);
    board.saveFlash();
  }
  process.exit(0);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    if (board.saveTimer) {
      clearTimeout(board.saveTimer);
      board.saveFlash();
    }
    process.exit(0);
  });
}
function pressReset(bootsel) {
  board.bootselUntilNanos = bootsel ? 1.5e9 : 0;
  board.stopped = true;
  board.sim.stop();
  if (board.sleepTimer) clearTimeout(board.sleepTimer);
  board.sleepTimer = null;
  setImmediate(() => board.boot(bootsel ? 'reset button, BOOTSEL held' : 'reset button'));
}
process.on('SIGUSR1', () => pressReset(true));
process.on('SIGUSR2', () => pressReset(false));
process.on('SIGHUP', () => {
  if (!args.ina219File) return;
  try {
    board.setINA219(fs.readFileSync(args.ina219File, 'utf8').trim());
  } catch (err) {
    log(`i2c: ${err.message}`);
  }
});
board.boot('power on');
