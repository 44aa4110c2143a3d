// The seed recipe through a client generated from openapi.yaml:
//   npx openapi-typescript openapi.yaml -o clients/typescript/schema.d.ts
// openapi-fetch checks every path, parameter and body against those types.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Order = components["schemas"]["Order"];
type Checkout = components["schemas"]["Checkout"];

const kanal = createClient<paths>({
  baseUrl: "http://127.0.0.1:8080",
  headers: { Authorization: "Bearer 8fK2pX9mWq4Ld7Vb3Nc6Ts1Z" },
});
const store = { store_id: 123 };

export async function pushOrder(): Promise<Order> {
  const { data, error, response } = await kanal.POST("/api/v1/stores/{store_id}/orders", {
    params: { path: store },
    body: {
      external_id: "ORDER-1001",
      placed_at: "2026-05-18T10:00:00Z",
      total_price: 49.9,
      currency: "EUR",
      customer: { phone: "+33612345678", first_name: "Marie", tags: ["vip"], orders_count: 7 },
      line_items: [{ title: "T-shirt Bordeaux", quantity: 2, price: 24.95 }],
      metadata: { source: "custom-checkout" },
    },
  });
  if (error) {
    // 422 bodies are typed too: a summary and the failing fields.
    const detail = "errors" in error ? JSON.stringify(error.errors) : JSON.stringify(error);
    throw new Error(`${response.status}: ${detail}`);
  }
  const paid = await kanal.PATCH("/api/v1/stores/{store_id}/orders/{external_id}", {
    params: { path: { ...store, external_id: data.external_id } },
    body: { financial_status: "paid" },
  });
  const shipment = await kanal.POST("/api/v1/stores/{store_id}/shipments", {
    params: { path: store },
    body: { external_id: "SHIP-9001", order_external_id: data.external_id, status: "in_transit" },
  });
  const status: "pending" | "in_transit" | "delivered" | "failed" | "returned" | null | undefined =
    shipment.data?.status;
  console.log(status);
  return paid.data ?? data;
}

export async function recoverCheckout(): Promise<Checkout | undefined> {
  await kanal.POST("/api/v1/stores/{store_id}/checkouts", {
    params: { path: store },
    body: {
      external_id: "CHECKOUT-7700",
      abandoned_at: "2026-05-18T09:40:00Z",
      recovery_url: "https://shop.example.com/checkout/recover/7700",
      total_price: 49.9,
      customer: { phone: "+33612345678" },
    },
  });
  const { data } = await kanal.PATCH("/api/v1/stores/{store_id}/checkouts/{external_id}", {
    params: { path: { ...store, external_id: "CHECKOUT-7700" } },
    body: { status: "recovered" },
  });
  await kanal.DELETE("/api/v1/stores/{store_id}/customers/{external_id}", {
    params: { path: { ...store, external_id: "CUST-42" } },
  });
  return data;
}

type Import = components["schemas"]["Import"];

// A backfill: records as a JSON array (the same records as JSON Lines go as
// application/x-ndjson), then the job followed until it ends, and its invalid records.
export async function backfill(): Promise<Import | undefined> {
  const started = await kanal.POST("/api/v1/stores/{store_id}/imports", {
    params: { path: store, query: { resource: "orders" } },
    body: [
      {
        external_id: "ORDER-1002",
        placed_at: "2026-05-18T11:00:00Z",
        total_price: 19.5,
        customer: { phone: "+33612345678" },
      },
    ],
  });
  if (!started.data) return undefined;
  const job = { ...store, import_id: started.data.id };
  let current: Import | undefined = started.data;
  while (current && (current.state === "queued" || current.state === "running")) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    current = (await kanal.GET("/api/v1/stores/{store_id}/imports/{import_id}", {
      params: { path: job },
    })).data;
  }
  const invalid = await kanal.GET("/api/v1/stores/{store_id}/imports/{import_id}/errors", {
    params: { path: job, query: { limit: 250 } },
  });
  for (const entry of invalid.data?.errors ?? []) {
    console.log(`line ${entry.line}: ${JSON.stringify(entry.errors)}`);
  }
  return current;
}
