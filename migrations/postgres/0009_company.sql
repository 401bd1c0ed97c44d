-- The car's company card in the CRM (amoCRM "Компания", Bitrix24 company), beside the
-- driver's deal: both find the vehicle (`GET /api/v1/vehicles?crm_company_id=…`).
ALTER TABLE vehicles ADD COLUMN crm_company_id TEXT;
CREATE INDEX vehicles_crm_deal ON vehicles (crm_deal_id);
CREATE INDEX vehicles_crm_company ON vehicles (crm_company_id);
